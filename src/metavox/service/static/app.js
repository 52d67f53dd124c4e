// metavox's enrollment page: plain JavaScript, no build step, no third-party code.
// Records clips from the microphone (Web Audio, raw: no echo cancellation, noise
// suppression or gain control), encodes them as 16-bit WAV, uploads them to the service,
// enrolls, and streams live 16-bit PCM over a WebSocket to show every word's score.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, profile: "", words: new Map(), live: null };
// what the page saw, for people and for the browser test
window.metavox = { detections: [], hops: 0, errors: [] };

function say(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
  if (error) window.metavox.errors.push(text);
}

function token() { return $("token").value.trim(); }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    if (response.status === 401) $("token-box").open = true;
    throw new Error(message);
  }
  return response;
}

const enc = encodeURIComponent;
const profilePath = () => "profiles/" + enc(state.profile);

// ---- audio ----------------------------------------------------------------------------

async function openMicrophone() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("this browser cannot record (the page needs https or localhost)");
  }
  const stream = await navigator.mediaDevices.getUserMedia({ audio: {
    channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  const context = new AudioContext({ sampleRate: state.info.sample_rate });
  const source = context.createMediaStreamSource(stream);
  const node = context.createScriptProcessor(1024, 1, 1);
  source.connect(node);
  node.connect(context.destination);
  const close = async () => {
    node.onaudioprocess = null;
    source.disconnect(); node.disconnect();
    stream.getTracks().forEach((t) => t.stop());
    await context.close();
  };
  return { context, node, close };
}

async function record(seconds) {
  const mic = await openMicrophone();
  const rate = mic.context.sampleRate;
  const want = Math.round(seconds * rate);
  const out = new Float32Array(want);
  let have = 0;
  await new Promise((resolve) => {
    mic.node.onaudioprocess = (e) => {
      const x = e.inputBuffer.getChannelData(0);
      const n = Math.min(x.length, want - have);
      out.set(x.subarray(0, n), have);
      have += n;
      if (have >= want) resolve();
    };
  });
  await mic.close();
  return { samples: out, rate };
}

function toInt16(samples) {
  const pcm = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    pcm[i] = s < 0 ? s * 32768 : s * 32767;
  }
  return pcm;
}

function wav(samples, rate) {
  const pcm = toInt16(samples);
  const buffer = new ArrayBuffer(44 + pcm.byteLength);
  const v = new DataView(buffer);
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) v.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF"); v.setUint32(4, 36 + pcm.byteLength, true); text(8, "WAVE");
  text(12, "fmt "); v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true);
  v.setUint32(24, rate, true); v.setUint32(28, rate * 2, true); v.setUint16(32, 2, true);
  v.setUint16(34, 16, true); text(36, "data"); v.setUint32(40, pcm.byteLength, true);
  new Int16Array(buffer, 44).set(pcm);
  return new Blob([buffer], { type: "audio/wav" });
}

function drawWave(canvas, samples) {
  const width = canvas.width = canvas.clientWidth * devicePixelRatio || 300;
  const height = canvas.height = canvas.clientHeight * devicePixelRatio || 60;
  const g = canvas.getContext("2d");
  g.fillStyle = "#0b5cad";
  const step = Math.max(1, Math.floor(samples.length / width));
  for (let x = 0; x < width; x++) {
    let lo = 0, hi = 0;
    for (let i = x * step; i < Math.min(samples.length, (x + 1) * step); i++) {
      lo = Math.min(lo, samples[i]); hi = Math.max(hi, samples[i]);
    }
    const y0 = (1 - hi) * height / 2, y1 = (1 - lo) * height / 2;
    g.fillRect(x, y0, 1, Math.max(1, y1 - y0));
  }
}

async function decode(blob) {
  const context = new OfflineAudioContext(1, 1, state.info.sample_rate);
  try { return (await context.decodeAudioData(await blob.arrayBuffer())).getChannelData(0); }
  catch (e) { return null; }
}

// ---- profiles, words, clips -------------------------------------------------------------

async function loadProfiles(select) {
  const { profiles } = await (await api("profiles")).json();
  const menu = $("profile");
  menu.replaceChildren(new Option(profiles.length ? "(choose)" : "(none yet)", ""));
  profiles.forEach((p) => menu.add(new Option(p, p)));
  if (select !== undefined) menu.value = select;
}

async function chooseProfile(name) {
  state.profile = name;
  state.words = new Map();
  $("model").textContent = "";
  showExpectations(null);
  setDownload(false);
  if (!name) { renderWords(); return; }
  const { clips } = await (await api(profilePath() + "/clips")).json();
  for (const c of clips) {
    if (!state.words.has(c.word)) state.words.set(c.word, []);
    state.words.get(c.word).push({ id: c.id, seconds: c.seconds });
  }
  renderWords();
  await Promise.all([...state.words.values()].flat().map(loadClipAudio));
  const profile = await (await api(profilePath())).json();
  if (profile.model) showModel(profile.model);
  const n = [...state.words.values()].flat().length;
  say("Profile “" + name + "”: " + state.words.size + " words, " + n + (n === 1 ? " clip." : " clips."));
}

async function loadClipAudio(clip) {
  const blob = await (await api(profilePath() + "/clips/" + clip.id)).blob();
  clip.url = URL.createObjectURL(blob);
  clip.samples = await decode(blob);
  renderWords();
}

function renderWords() {
  const list = $("words");
  list.replaceChildren();
  for (const [word, clips] of state.words) {
    const item = document.createElement("li");
    item.className = "word";
    const title = document.createElement("h3");
    title.textContent = word + " (" + clips.length + (clips.length === 1 ? " clip)" : " clips)");
    const rec = document.createElement("button");
    rec.type = "button";
    rec.textContent = "Record “" + word + "”";
    rec.dataset.word = word;
    rec.className = "record";
    rec.addEventListener("click", () => recordClip(word, rec));
    const row = document.createElement("ul");
    row.className = "clips";
    row.setAttribute("aria-label", "clips of " + word);
    clips.forEach((clip, k) => {
      const li = document.createElement("li");
      li.className = "clip";
      const canvas = document.createElement("canvas");
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", "waveform of clip " + (k + 1) + " of " + word);
      const audio = document.createElement("audio");
      audio.controls = true;
      audio.preload = "none";
      audio.setAttribute("aria-label", "play clip " + (k + 1) + " of " + word);
      if (clip.url) audio.src = clip.url;
      const del = document.createElement("button");
      del.type = "button";
      del.className = "secondary";
      del.textContent = "Delete";
      del.setAttribute("aria-label", "delete clip " + (k + 1) + " of " + word);
      del.addEventListener("click", () => deleteClip(word, clip));
      li.append(canvas, audio, del);
      row.append(li);
      if (clip.samples) requestAnimationFrame(() => drawWave(canvas, clip.samples));
    });
    item.append(title, rec, row);
    list.append(item);
  }
}

async function recordClip(word, button) {
  if (!state.profile) return say("Create or choose a profile first.", true);
  const seconds = parseFloat($("seconds").value);
  button.disabled = true;
  button.textContent = "Recording… say “" + word + "”";
  try {
    const { samples, rate } = await record(seconds);
    say("Uploading “" + word + "”…");
    const body = new FormData();
    body.append("file", wav(samples, rate), word + ".wav");
    const clip = await (await api(profilePath() + "/words/" + enc(word) + "/clips",
                                  { method: "POST", body })).json();
    state.words.get(word).push({ id: clip.id, seconds: clip.seconds, samples,
                                 url: URL.createObjectURL(wav(samples, rate)) });
    say("Recorded “" + word + "” (" + clip.seconds.toFixed(2) + " s).");
  } catch (err) {
    say("Could not record “" + word + "”: " + err.message, true);
  }
  renderWords();
}

async function deleteClip(word, clip) {
  try {
    await api(profilePath() + "/clips/" + clip.id, { method: "DELETE" });
    state.words.set(word, state.words.get(word).filter((c) => c !== clip));
    renderWords();
    say("Deleted a clip of “" + word + "”.");
  } catch (err) { say(err.message, true); }
}

// ---- enrollment and the model ------------------------------------------------------------

function showModel(m) {
  $("model").textContent = "Model version " + m.version + ": " + m.words.join(", ") +
    (m.seconds !== undefined ? " (enrolled in " + m.seconds.toFixed(2) + " s)" : "") + ".";
  showExpectations(m.expectations);
  setDownload(true);
}

const percent = (x) => Math.round(100 * x) + "%";

// what the enrollment said to expect: warnings first, then a row per word
function showExpectations(e) {
  const box = $("expect");
  box.replaceChildren();
  box.hidden = !e;
  if (!e) return;
  const warnings = document.createElement("ul");
  warnings.id = "warnings";
  for (const w of e.warnings) {
    const li = document.createElement("li");
    li.className = "warning " + w.kind;
    li.textContent = w.message;
    warnings.append(li);
  }
  const table = document.createElement("table");
  table.id = "expectations";
  const caption = document.createElement("caption");
  caption.textContent = "What to expect";
  const head = table.createTHead().insertRow();
  for (const h of ["Word", "Clips", "Expected detection", "False accepts per 100 other sounds"]) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = h;
    head.append(th);
  }
  const body = table.createTBody();
  for (const w of e.words) {
    const row = body.insertRow();
    const cells = [w.word, String(w.clips),
      w.detection === null ? "unknown (record more clips)"
        : w.detected + " of " + w.held_out + " (" + percent(w.detection) + "; could be " +
          percent(w.detection_low) + "–" + percent(w.detection_high) + ")",
      w.false_accepts_per_100 === null ? "–" : w.false_accepts_per_100.toFixed(1)];
    for (const c of cells) row.insertCell().textContent = c;
  }
  table.prepend(caption);
  const note = document.createElement("p");
  note.className = "note";
  note.textContent = e.note;
  if (e.warnings.length) box.append(warnings);
  box.append(table, note);
}

function setDownload(on) { $("download").setAttribute("aria-disabled", on ? "false" : "true"); }

async function adapt() {
  if (!state.profile) return say("Create or choose a profile first.", true);
  $("adapt").disabled = true;
  say("Enrolling…");
  try {
    const m = await (await api(profilePath() + "/adapt", { method: "POST" })).json();
    showModel(m);
    const n = m.expectations ? m.expectations.warnings.length : 0;
    say("Enrolled " + m.words.length + " words from " + m.clips + " clips" +
        (n ? "; " + n + (n === 1 ? " warning" : " warnings") + " below." : "."));
  } catch (err) { say("Could not enroll: " + err.message, true); }
  $("adapt").disabled = false;
}

async function download(event) {
  event.preventDefault();
  if ($("download").getAttribute("aria-disabled") === "true") return;
  try {
    const blob = await (await api(profilePath() + "/model.onnx")).blob();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = state.profile + ".onnx";
    a.click();
    say("Downloaded " + a.download + " (" + Math.round(blob.size / 1024) + " KiB).");
  } catch (err) { say("Could not download the model: " + err.message, true); }
}

// ---- live -------------------------------------------------------------------------------

function buildBars(words) {
  const bars = $("bars");
  bars.replaceChildren();
  const rows = new Map();
  for (const w of words) {
    const label = document.createElement("span");
    label.className = "bar-label";
    label.textContent = w;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-label", "confidence of " + w + " (the mark is the detection threshold)");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    const fill = document.createElement("div");
    fill.className = "fill";
    const mark = document.createElement("div");
    mark.className = "mark";
    bar.append(fill, mark);
    bars.append(label, bar);
    rows.set(w, { label, bar, fill, mark });
  }
  return rows;
}

function flash(row) {
  row.bar.classList.add("hit"); row.label.classList.add("hit");
  setTimeout(() => { row.bar.classList.remove("hit"); row.label.classList.remove("hit"); }, 700);
}

async function startListening() {
  if (!state.profile) return say("Create or choose a profile first.", true);
  const url = new URL(profilePath() + "/listen", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (token()) url.searchParams.set("token", token());
  // one decision per speech segment instead of every hop (words said on their own)
  if ($("per-word").checked) url.searchParams.set("decision", "segments");
  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  const live = { socket, mic: null, rows: new Map(), sent: 0, start: 0 };
  state.live = live;
  window.metavox.detections = [];
  window.metavox.hops = 0;
  socket.onmessage = (event) => {
    const m = JSON.parse(event.data);
    if (m.error) { say(m.error, true); stopListening(); return; }
    if (m.words) { live.rows = buildBars(m.words); return; }
    window.metavox.hops++;
    // bars: each word's confidence (the threshold is 50%) or, without a calibrated
    // threshold, the score's level (the threshold at 75%)
    const sure = m.confidence !== undefined;
    for (const [w, level] of Object.entries(sure ? m.confidence : (m.levels || {}))) {
      const row = live.rows.get(w);
      if (!row) continue;
      row.fill.style.width = Math.round(100 * level) + "%";
      row.mark.style.left = sure ? "50%" : "75%";
      row.bar.setAttribute("aria-valuenow", String(Math.round(100 * level)));
      row.bar.setAttribute("aria-valuetext", sure ? percent(level) + " sure" : percent(level));
    }
    if (m.detection) {
      const d = m.detection;
      // seconds of audio captured when the answer arrived: compare with d.time
      const received = (performance.now() - live.start) / 1000;
      window.metavox.detections.push(Object.assign({ received }, d));
      const li = document.createElement("li");
      li.textContent = d.word + " at " + d.time.toFixed(2) + " s — " + (d.confidence !== undefined
        ? percent(d.confidence) + " sure" : "score " + d.score.toFixed(2));
      $("detections").prepend(li);
      if (live.rows.has(d.word)) flash(live.rows.get(d.word));
    }
  };
  socket.onclose = (event) => {
    if (state.live === live && event.code !== 1000) say("The live stream closed (" + (event.reason || event.code) + ").", true);
    if (state.live === live) stopListening();
  };
  await new Promise((resolve, reject) => { socket.onopen = resolve; socket.onerror = () => reject(new Error("could not open the live stream")); });
  live.mic = await openMicrophone();
  live.mic.node.onaudioprocess = (e) => {
    const x = e.inputBuffer.getChannelData(0);
    if (!live.start) live.start = performance.now() - 1000 * x.length / live.mic.context.sampleRate;
    if (socket.readyState === WebSocket.OPEN) socket.send(toInt16(x).buffer);
    live.sent += x.length;
  };
  $("listen").textContent = "Stop listening";
  $("listen").setAttribute("aria-pressed", "true");
  $("per-word").disabled = true;
  say("Listening: say one of your words.");
}

async function stopListening() {
  const live = state.live;
  state.live = null;
  if (!live) return;
  if (live.mic) await live.mic.close();
  if (live.socket.readyState <= WebSocket.OPEN) live.socket.close(1000);
  $("listen").textContent = "Start listening";
  $("listen").setAttribute("aria-pressed", "false");
  $("per-word").disabled = false;
}

// ---- wiring -----------------------------------------------------------------------------

async function guarded(work) {
  try { await work(); } catch (err) { say(err.message, true); }
}

$("new-profile").addEventListener("submit", (e) => {
  e.preventDefault();
  guarded(async () => {
    const name = $("profile-name").value.trim();
    await api("profiles", { method: "POST", headers: { "Content-Type": "application/json" },
                            body: JSON.stringify({ name }) });
    $("profile-name").value = "";
    await loadProfiles(name);
    await chooseProfile(name);
    say("Created profile “" + name + "”. Add a word.");
  });
});
$("profile").addEventListener("change", (e) => guarded(() => chooseProfile(e.target.value)));
$("new-word").addEventListener("submit", (e) => {
  e.preventDefault();
  if (!state.profile) return say("Create or choose a profile first.", true);
  const word = $("word-name").value.trim();
  if (!word) return;
  if (!state.words.has(word)) state.words.set(word, []);
  $("word-name").value = "";
  renderWords();
  say("Added “" + word + "”: record it " + state.info.min_clips + " or more times.");
});
$("adapt").addEventListener("click", adapt);
$("download").addEventListener("click", download);
$("listen").addEventListener("click", () => guarded(() => (state.live ? stopListening() : startListening())));
$("token").addEventListener("change", () => guarded(start));

async function start() {
  state.info = await (await api("info")).json();
  await loadProfiles();
  say("Ready.");
}
guarded(start);
