"""The web page in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium) against the real server, with Chromium's fake
media stream feeding real speech as the microphone.

One speaker of the Speech Commands test folder enrolls 3 words through the page, 3 clips
each (a browser session per clip, since the fake microphone plays one file from its start
whenever the page opens it), then the page listens to a stream holding other recordings of
the 3 words and must show exactly those detections, in order, at their times; and again
with one decision per word (the page's checkbox: the service's segment decisions).

Screenshots go to ``$METAVOX_ARTIFACTS/browser`` (default ``artifacts/browser`` in the
repository). Without Chromium, its driver or Selenium the test skips with the reason,
unless ``METAVOX_REQUIRE_BROWSER=1`` (set by CI), which makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from data_paths import REPO
from scipy.signal import correlate
from server_helpers import start_server
from train_helpers import _write_manifest, tiny_config

from metavox.audio.io import speech_bounds

RATE = 16000
WORDS = ("left", "stop", "yes")  # enrolled through the page
TRAIN = ("bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow")
RECORD = 1.5  # the page's default recording length
ARTIFACTS = Path(os.environ.get("METAVOX_ARTIFACTS") or REPO / "artifacts") / "browser"


def browser_or_skip():
    missing = [p for p in ("chromium", "chromedriver") if shutil.which(p) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install 'metavox[test]')")
    if missing:
        reason = (f"the browser test needs {', '.join(missing)} (apt-get install chromium "
                  "chromium-driver)")
        if os.environ.get("METAVOX_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def speaker_clips(root: Path) -> tuple[str, dict[str, list[Path]]]:
    """The first speaker (by id) with at least 4 recordings of every enrolled word."""
    by: dict[str, dict[str, list[Path]]] = {}
    for word in WORDS:
        for f in sorted((root / word).glob("*.flac")):
            by.setdefault(f.name.split("_")[0], {}).setdefault(word, []).append(f)
    for speaker in sorted(by):
        if all(len(by[speaker].get(w, [])) >= 4 for w in WORDS):
            return speaker, by[speaker]
    raise AssertionError("no speaker with 4 recordings of each word")


def padded(path: Path, before: float, total: float) -> np.ndarray:
    wave, rate = sf.read(path, dtype="float32")
    assert rate == RATE
    out = np.zeros(int(total * RATE), np.float32)
    start = int(before * RATE)
    out[start:start + len(wave)] = wave[: len(out) - start]
    return out


@pytest.fixture(scope="module")
def server(shared_data, tmp_path_factory):
    browser_or_skip()
    pytest.importorskip("onnx", reason="the pretrained extra: pip install 'metavox[pretrained]'")
    from metavox.pipeline.train import train

    folder = tmp_path_factory.mktemp("browser")
    root = shared_data / "speech_commands_v2_test"
    rows = [(str(f), w, f.name.split("_")[0]) for w in TRAIN
            for f in sorted((root / w).glob("*.flac"))[:12]]
    manifest = _write_manifest(folder / "manifest", rows)
    # the pretrained embedding, Proto-MAML on its top block: two iterations are enough
    # for the page's plumbing; the accuracy of enrollment is measured by the protocols
    cfg = tiny_config(manifest, folder / "run", folder / "cache", frontend={},
                      data={"corpus": str(manifest), "split": "class",
                            "test_labels": ["tree", "wow"], "val_labels": ["marvin", "sheila"],
                            "cache_dir": str(folder / "cache")},
                      model={"name": "speech-embedding",
                             "options": {"scale": 1.0, "trainable_blocks": 1}},
                      algorithm={"name": "maml", "inner_lr": 0.5, "steps": 2,
                                 "options": {"head_init": "prototypes"}},
                      episodes={"ways": 2, "shots": 1, "queries": 2, "meta_batch": 2},
                      optim={"iterations": 2, "warmup": 1, "lr": 0.001},
                      validation={"every": 2, "episodes": 2, "checkpoint_every": 2},
                      evaluation={"episodes": 2, "shots": [1], "queries": 2, "max_steps": 0})
    train(cfg, progress=False)
    proc, url = start_server(folder / "run", folder / "data", log=folder / "server.log")
    url += "/"
    yield url, folder, root
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def chromium(microphone: Path, width: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as Driver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={microphone}%noloop",
                f"--window-size={width},1400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Driver(shutil.which("chromedriver")))
    driver.set_script_timeout(30)
    return driver


def wait_for(driver, condition, seconds: float = 30.0, what: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.1).until(condition)
    except Exception:
        status = driver.find_element("id", "status").text
        raise AssertionError(f"waited {seconds} s for {what}; the page says {status!r}") from None


def status_says(text: str):
    return lambda d: text in d.find_element("id", "status").text


def test_enroll_three_words_in_the_page_then_spot_them_live(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    url, folder, root = server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    speaker, clips = speaker_clips(root)
    mics = folder / "microphone"
    mics.mkdir()

    # 1-2. record 3 clips of each word: a fresh browser per clip, its microphone the clip
    for k in range(3):
        for i, word in enumerate(WORDS):
            mic = mics / f"{word}{k}.wav"
            sf.write(mic, padded(clips[word][k], 0.2, RECORD), RATE, subtype="PCM_16")
            driver = chromium(mic)
            try:
                driver.get(url)
                wait_for(driver, status_says("Ready"), what="the page to load")
                if k == 0 and i == 0:
                    driver.find_element(By.ID, "profile-name").send_keys("me")
                    driver.find_element(By.CSS_SELECTOR, "#new-profile button").click()
                    wait_for(driver, status_says("Created profile"), what="the profile")
                else:
                    Select(driver.find_element(By.ID, "profile")).select_by_value("me")
                    wait_for(driver, status_says("Profile “me”"), what="the profile's clips")
                if k == 0:
                    driver.find_element(By.ID, "word-name").send_keys(word)
                    driver.find_element(By.CSS_SELECTOR, "#new-word button").click()
                driver.find_element(By.CSS_SELECTOR, f'.record[data-word="{word}"]').click()
                wait_for(driver, status_says(f"Recorded “{word}”"), what=f"a clip of {word}")
                # the clip's waveform is drawn and it can be replayed
                drawn = driver.execute_script(
                    "const c = [...document.querySelectorAll('canvas')].pop();"
                    "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                    "let n = 0; for (let j = 3; j < d.length; j += 4) n += d[j] > 0; return n;")
                assert drawn > 100, "no waveform drawn"
                if k == 2 and i == len(WORDS) - 1:
                    driver.save_screenshot(str(ARTIFACTS / "1-enrolled-clips.png"))
            finally:
                driver.quit()

    import httpx

    listed = httpx.get(url + "profiles/me/clips").json()["clips"]
    assert sorted(c["word"] for c in listed) == sorted(WORDS * 3)
    # what the page sent is what the microphone played: the server's copy of the first
    # clip matches the recording it came from, up to the capture's start-up delay
    got, _ = sf.read(io_bytes(httpx.get(url + f"profiles/me/clips/{listed[0]['id']}").content))
    want = sf.read(clips[listed[0]["word"]][0], dtype="float64")[0]
    lag = int(np.argmax(correlate(got, want, mode="valid")))
    match = np.corrcoef(got[lag:lag + len(want)], want)[0, 1]
    assert match > 0.9 and len(got) == int(RECORD * RATE), (match, lag, len(got))

    # 3-4. enroll, then listen to a stream with other recordings of the words
    times, spoken, stream = [], [], [np.zeros(RATE, np.float32)]
    at = 1.0
    for word in WORDS:
        wave, _ = sf.read(clips[word][3], dtype="float32")
        times.append((word, at, at + len(wave) / RATE))
        spoken.append(at + speech_bounds(wave, RATE)[1] / RATE)  # where the speech ends
        stream += [wave, np.zeros(int(1.5 * RATE), np.float32)]
        at += len(wave) / RATE + 1.5
    stream.append(np.zeros(RATE, np.float32))
    mic = mics / "stream.wav"
    sf.write(mic, np.concatenate(stream), RATE, subtype="PCM_16")
    seconds = sum(len(x) for x in stream) / RATE

    driver = chromium(mic, width=390)  # a phone-sized window
    try:
        driver.get(url)
        wait_for(driver, status_says("Ready"), what="the page to load")
        Select(driver.find_element(By.ID, "profile")).select_by_value("me")
        wait_for(driver, status_says("Profile “me”: 3 words, 9 clips"), what="the 9 clips")
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        driver.save_screenshot(str(ARTIFACTS / "2-narrow.png"))
        driver.set_window_size(1000, 1000)
        driver.find_element(By.ID, "adapt").click()
        wait_for(driver, status_says("Enrolled 3 words from 9 clips"), seconds=60,
                 what="the enrollment")
        assert "Model version 1" in driver.find_element(By.ID, "model").text
        # what to expect: a row per word (its expected detection and false accepts)
        expected = [r.find_element(By.TAG_NAME, "td").text
                    for r in driver.find_elements(By.CSS_SELECTOR, "#expectations tbody tr")]
        driver.find_element(By.ID, "download").click()
        wait_for(driver, status_says("Downloaded me.onnx"), seconds=60, what="the ONNX model")
        driver.find_element(By.ID, "listen").click()
        t0 = time.monotonic()
        wait_for(driver, status_says("Listening"), what="the live view")
        driver.execute_script("document.getElementById('h-enroll').scrollIntoView()")
        wait_for(driver, lambda d: len(d.execute_script("return window.metavox.detections"))
                 >= len(WORDS), seconds=seconds + 5, what="the detections")
        driver.save_screenshot(str(ARTIFACTS / "3-live.png"))
        time.sleep(max(0.0, seconds + 1.0 - (time.monotonic() - t0)))
        seen = driver.execute_script("return window.metavox")
        listed = driver.find_element(By.ID, "detections").text
        driver.find_element(By.ID, "listen").click()
        labels = driver.find_elements(By.CSS_SELECTOR, "#bars [role=meter]")
    finally:
        driver.quit()

    assert not seen["errors"], seen["errors"]
    assert overflow <= 0, f"the page is {overflow} px wider than a 390 px screen"
    assert len(labels) == 3 and seen["hops"] >= 10 * (seconds - 1)
    assert expected == sorted(WORDS), expected
    # detections read as a confidence: over the threshold's 50%, shown as "N% sure"
    assert all(0.5 <= d["confidence"] <= 1 for d in seen["detections"]), seen["detections"]
    assert listed.count("% sure") == len(seen["detections"]), listed
    found = [(d["word"], d["time"], d["received"]) for d in seen["detections"]]
    assert [w for w, _, _ in found] == list(WORDS), (found, times)
    latencies = []
    for (word, t, received), (_, start, end), said in zip(found, times, spoken, strict=True):
        assert start <= t <= end + 0.75, (word, t, start, end)
        latencies.append(received - said)
    print(f"speaker {speaker}: detections {found}; placed {times}; shown on the page "
          f"{[round(x, 3) for x in latencies]} s after the speech ended; screenshots in "
          f"{ARTIFACTS}")
    assert max(latencies) < 1.0

    # 5. one decision per word: a fresh page on the same stream, the checkbox ticked
    driver = chromium(mic)
    try:
        driver.get(url)
        wait_for(driver, status_says("Ready"), what="the page to load")
        Select(driver.find_element(By.ID, "profile")).select_by_value("me")
        wait_for(driver, status_says("Profile “me”"), what="the profile")
        driver.find_element(By.ID, "per-word").click()
        driver.find_element(By.ID, "listen").click()
        t0 = time.monotonic()
        wait_for(driver, status_says("Listening"), what="the live view")
        locked = driver.find_element(By.ID, "per-word").get_attribute("disabled")
        wait_for(driver, lambda d: len(d.execute_script("return window.metavox.detections"))
                 >= len(WORDS), seconds=seconds + 5, what="the per-word detections")
        time.sleep(max(0.0, seconds + 1.0 - (time.monotonic() - t0)))
        per_word = driver.execute_script("return window.metavox")
        driver.find_element(By.ID, "listen").click()
    finally:
        driver.quit()
    assert not per_word["errors"], per_word["errors"]
    assert locked  # the choice holds for the whole stream
    found = [(d["word"], d["time"]) for d in per_word["detections"]]
    assert [w for w, _ in found] == list(WORDS), (found, times)
    for (word, t), (_, start, end) in zip(found, times, strict=True):
        assert start <= t <= end + 0.75, (word, t, start, end)
    # one message per speech segment, not one per hop
    assert per_word["hops"] <= 2 * len(WORDS), per_word["hops"]
    print(f"one decision per word: detections {found}")


def io_bytes(data: bytes):
    import io

    return io.BytesIO(data)
