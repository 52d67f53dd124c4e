"""Meta-training: runs end to end on real speech, checkpoints, resumes exactly."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from train_helpers import tiny_config

from metavox.data import Split
from metavox.pipeline.build import build_model
from metavox.pipeline.config import ConfigError
from metavox.pipeline.train import load_trained, train
from metavox.storage import CheckpointError, load_checkpoint, save_checkpoint


def test_train_writes_checkpoints_logs_and_config(manifest, cache, tmp_path):
    cfg = tiny_config(manifest, tmp_path / "run", cache)
    result = train(cfg, progress=False)
    out = result.out
    assert result.state.iteration == 6
    for name in ("latest.safetensors", "best.safetensors", "metrics.csv", "config.toml",
                 "split.json"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[2]["val_accuracy"] != "" and rows[0]["val_accuracy"] == ""
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] < lrs[1]  # warm-up
    assert lrs[-1] < lrs[2]  # cosine decay
    ckpt = load_checkpoint(out / "latest.safetensors")
    assert ckpt.meta["state"]["iteration"] == 6
    assert ckpt.meta["frontend"]["n_mels"] == 20
    assert list(Split.load(out / "split.json").part("test").labels) == ["6", "7"]
    events = list((out / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0  # TensorBoard scalars
    loaded = load_trained(out)
    assert type(loaded.algo).__name__ == "MAML" and loaded.frontend.n_mels == 20


def test_resume_continues_exactly(manifest, cache, tmp_path):
    straight = train(tiny_config(manifest, tmp_path / "a", cache), progress=False)
    cfg_b = tiny_config(manifest, tmp_path / "b", cache)
    part = train(cfg_b, progress=False, stop_after=3)  # "crash" after iteration 3
    assert part.state.iteration == 3
    resumed = train(cfg_b, progress=False, resume=True)
    assert resumed.state.iteration == 6
    a = straight.algo.state_dict()
    b = resumed.algo.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = list(csv.DictReader((tmp_path / "b" / "metrics.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("algorithm", ["fomaml", "reptile", "anil", "protonet", "metasgd",
                                       "mamlpp"])
def test_every_algorithm_trains_from_config(manifest, cache, tmp_path, algorithm):
    # ProtoNet has no inner loop: the inner-loop settings of the tiny config do not apply
    section = ({"name": algorithm} if algorithm == "protonet" else
               {"name": algorithm, "steps": 1, "eval_steps": 2, "inner_lr": 0.3})
    cfg = tiny_config(manifest, tmp_path / algorithm, cache, algorithm=section,
                      optim={"iterations": 2, "warmup": 2, "lr": 0.01},
                      validation={"every": 2, "episodes": 2, "checkpoint_every": 2})
    result = train(cfg, progress=False)
    assert result.state.iteration == 2
    assert type(load_trained(result.out).algo).__name__ == type(result.algo).__name__


def test_algorithm_settings_it_does_not_take_are_errors(manifest, cache, tmp_path):
    from metavox.pipeline.config import ConfigError

    cfg = tiny_config(manifest, tmp_path / "p", cache, algorithm__name="protonet")
    with pytest.raises(ConfigError, match=r"'protonet' does not take \['eval_steps', "
                                          r"'inner_lr', 'steps'\]"):
        train(cfg, progress=False)
    cfg = tiny_config(manifest, tmp_path / "m", cache, algorithm__options={"lr": "per_step"})
    with pytest.raises(ConfigError, match=r"'maml' does not take \['lr'\]"):
        train(cfg, progress=False)
    assert not (tmp_path / "p").exists() and not (tmp_path / "m").exists()


def test_resume_without_checkpoint_and_broken_checkpoints(manifest, cache, tmp_path):
    cfg = tiny_config(manifest, tmp_path / "none", cache)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(cfg, progress=False, resume=True)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    from metavox import storage as ck

    path = tmp_path / "c.safetensors"
    save_checkpoint(path, ck.Checkpoint({"w": torch.ones(3)}, {"note": "old"}))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, ck.Checkpoint({"w": torch.zeros(3)}, {"note": "new"}))
    kept = load_checkpoint(path)  # the old checkpoint is intact, no temp files left
    assert kept.meta["note"] == "old" and torch.equal(kept.tensors["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_spec_augment_applies_to_training_episodes_only(manifest, cache, tmp_path):
    from metavox.pipeline.build import build_run_data, make_sampler

    cfg = tiny_config(manifest, tmp_path / "aug", cache,
                      augment={"spec_augment": True, "freq_masks": 2, "freq_width": 6})
    data = build_run_data(cfg)
    plain = make_sampler(data.parts["train"], cfg.episodes, seed=0, stream="train")
    aug = make_sampler(data.parts["train"], cfg.episodes, seed=0, stream="train",
                       augment=cfg.augment)
    a, b = plain.sample(2, 0), aug.sample(2, 0)
    assert torch.equal(a.support_y, b.support_y) and not torch.equal(a.support_x, b.support_x)
    assert torch.equal(aug.sample(2, 0).support_x, b.support_x)  # seeded
    val = make_sampler(data.parts["val"], cfg.episodes, seed=0, stream="val",
                       augment=cfg.augment)
    assert val.augment is None
    assert train(cfg, progress=False).state.iteration == 6


def test_bfloat16_precision_trains_under_autocast(manifest, cache, tmp_path):
    from torch.nn.modules.module import register_module_forward_hook

    seen: set[torch.dtype] = set()

    def record(module, args, output):
        if isinstance(module, torch.nn.Conv2d):
            seen.add(output.dtype)

    cfg = tiny_config(manifest, tmp_path / "bf16", cache, precision="bfloat16",
                      optim__iterations=2,
                      validation={"every": 2, "episodes": 2, "checkpoint_every": 2})
    handle = register_module_forward_hook(record)
    try:
        result = train(cfg, progress=False)
    finally:
        handle.remove()
    assert seen == {torch.bfloat16}  # training and validation ran in bfloat16
    assert result.state.iteration == 2 and result.state.best_val >= 0
    # parameters and checkpoints stay float32
    ckpt = load_checkpoint(result.out / "latest.safetensors")
    assert {t.dtype for t in ckpt.tensors.values() if t.is_floating_point()} == {torch.float32}
    assert load_trained(result.out).config.precision == "bfloat16"


def test_precision_and_device_are_checked(manifest, cache, tmp_path):
    from metavox.pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="precision must be one of float32, bfloat16"):
        tiny_config(manifest, tmp_path / "x", cache, precision="float16")
    from metavox.engine import resolve_device

    with pytest.raises(ValueError, match="not a device name"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="device: .*not a device name"):
        train(tiny_config(manifest, tmp_path / "y", cache, device="gpu0"), progress=False)


def test_adaptation_settings_are_chosen_on_validation(manifest, cache, tmp_path):
    from metavox.pipeline.config import ConfigError

    cfg = tiny_config(manifest, tmp_path / "sel", cache,
                      validation={"every": 3, "episodes": 4, "checkpoint_every": 3,
                                  "select_inner_lr": [0.1, 0.3], "select_eval_steps": [1, 2]})
    result = train(cfg, progress=False)
    sel = result.selection
    assert sel is not None and len(sel.table) == 4
    best = max(sel.table, key=lambda r: r["accuracy"])  # the first of equals wins
    assert (sel.inner_lr, sel.eval_steps) == (best["inner_lr"], best["eval_steps"])
    saved = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert saved["inner_lr"] == sel.inner_lr and len(saved["table"]) == 4
    meta = load_checkpoint(tmp_path / "sel" / "best.safetensors").meta
    assert meta["adaptation"]["trained_inner_lr"] == 0.3
    loaded = load_trained(tmp_path / "sel")  # adapts with the chosen settings ...
    assert (loaded.algo.inner_lr, loaded.algo.eval_steps) == (sel.inner_lr, sel.eval_steps)
    assert loaded.config.algorithm.inner_lr == 0.3  # ... the config stays the training one
    cfg = tiny_config(manifest, tmp_path / "p", cache, algorithm={"name": "protonet"},
                      validation={"every": 3, "episodes": 4, "checkpoint_every": 3,
                                  "select_inner_lr": [0.1]})
    with pytest.raises(ConfigError, match="protonet has no inner loop"):
        train(cfg, progress=False)
    cfg = tiny_config(manifest, tmp_path / "s", cache, algorithm__name="metasgd",
                      validation={"every": 3, "episodes": 4, "checkpoint_every": 3,
                                  "select_inner_lr": [0.1]})
    with pytest.raises(ConfigError, match="metasgd learns its step sizes"):
        train(cfg, progress=False)


def test_divergence_skips_updates_then_stops_with_a_message(manifest, cache, tmp_path):
    """An inner step size of 1e36 makes every meta-loss NaN: each update is skipped and
    logged, no checkpoint ever holds a non-finite tensor, and after max_nonfinite in a row
    the run stops naming the iteration and the last good checkpoint."""
    from metavox.engine import DivergenceError

    diverging = {"name": "maml", "inner_lr": 1e36, "steps": 3, "eval_steps": 2}
    cfg = tiny_config(manifest, tmp_path / "nan", cache, algorithm=diverging,
                      optim={"iterations": 12, "warmup": 1, "lr": 0.01, "max_nonfinite": 3})
    with pytest.raises(DivergenceError, match=r"4 iterations in a row \(up to iteration 4; "
                                              r"4 skipped in all\).*Last good checkpoint: .*"
                                              r"latest.safetensors"):
        train(cfg, progress=False)
    rows = list(csv.DictReader((tmp_path / "nan" / "metrics.csv").open()))
    assert [r["skipped"] for r in rows] == ["1"] * 4
    for name in ("latest.safetensors", "best.safetensors"):
        ckpt = load_checkpoint(tmp_path / "nan" / name)
        assert all(torch.isfinite(t).all() for t in ckpt.tensors.values()
                   if t.is_floating_point())
    # with more patience the run finishes; every update was skipped, the weights untouched
    cfg = tiny_config(manifest, tmp_path / "patient", cache, algorithm=diverging,
                      optim={"iterations": 6, "warmup": 1, "lr": 0.01, "max_nonfinite": 10})
    result = train(cfg, progress=False)
    assert (result.state.skipped, result.state.iteration) == (6, 6)
    torch.manual_seed(cfg.seed)
    fresh = build_model(cfg, result.data.input_shape, cfg.episodes.ways)
    assert all(torch.equal(p, q) for p, q in zip(fresh.parameters(),
                                                 result.algo.model.parameters(), strict=True))


def test_a_full_disk_during_a_checkpoint_is_a_clear_error(manifest, cache, tmp_path,
                                                          monkeypatch):
    """ENOSPC while writing a checkpoint: the command ends with a message naming the file
    (no traceback), and the previous checkpoint is intact."""
    import errno

    from typer.testing import CliRunner

    import metavox.storage as storage
    from metavox.cli import app
    from metavox.pipeline.config import to_toml

    cfg = tiny_config(manifest, tmp_path / "run", cache)
    train(cfg, progress=False)
    before = load_checkpoint(tmp_path / "run" / "latest.safetensors")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "save_file", full)
    config = tmp_path / "run.toml"
    config.write_text(to_toml({**cfg.to_dict(), "optim": {**cfg.to_dict()["optim"],
                                                           "iterations": 9}}))
    res = CliRunner().invoke(app, ["train", "-c", str(config), "--resume", "--no-progress"])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert "could not write" in res.output and "No space left on device" in res.output
    assert ".safetensors" in res.output and "is intact" in res.output
    after = load_checkpoint(tmp_path / "run" / "latest.safetensors")
    assert after.meta["state"] == before.meta["state"]
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_a_run_folder_in_use_is_refused(manifest, cache, tmp_path):
    """Two writers never share a run folder: while one process holds it, another
    `metavox train` into it stops at once with a message naming the holder's pid and
    writes nothing; once released, training proceeds."""
    import os
    import subprocess
    import sys

    from metavox.pipeline.config import to_toml
    from metavox.storage import FolderInUseError, folder_lock

    cfg = tiny_config(manifest, tmp_path / "run", cache)
    config = tmp_path / "run.toml"
    config.write_text(to_toml(cfg.to_dict()))
    with folder_lock(tmp_path / "run"):
        with pytest.raises(FolderInUseError, match=f"in use by another metavox process "
                                                   f"\\(pid {os.getpid()}\\)"):
            train(cfg, progress=False)
        proc = subprocess.run([sys.executable, "-m", "metavox", "train", "-c", str(config),
                               "--no-progress"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1 and f"(pid {os.getpid()})" in proc.stderr
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]
    assert train(cfg, progress=False).state.iteration == cfg.optim.iterations


def test_more_corpora_join_meta_training_by_weight(manifest, cache, tmp_path):
    """``[[data.mix]]``: a second corpus's classes join the training episodes in the stated
    share, its classes that the run validates or tests on are left out, and the mixture is
    deterministic per episode."""
    from train_helpers import tone_manifest

    from metavox.pipeline.build import build_run_data, training_sampler

    other = tone_manifest(tmp_path / "other", labels=range(4, 12), speakers=("c", "d"))
    cfg = tiny_config(manifest, tmp_path / "run", cache,
                      data__weight=1.0, data__mix=[{"corpus": str(other), "weight": 3.0}])
    data = build_run_data(cfg)
    (store, weight), = data.mix
    assert weight == 3.0 and sorted(set(store.labels)) == ["10", "11", "8", "9"]
    sampler = training_sampler(cfg, data)
    sources = [sampler.source(i) for i in range(400)]
    assert 0.68 < sum(sources) / 400 < 0.82  # 3 : 1 for the mixed-in corpus
    for i in range(12):
        (classes,) = sampler.sample_range(i, 1).classes
        own = {"0", "1", "2", "3"}
        assert set(classes) <= (own if sources[i] == 0 else {"8", "9", "10", "11"})
    a, b = sampler.sample(2, 5), training_sampler(cfg, build_run_data(cfg)).sample(2, 5)
    assert torch.equal(a.support_x, b.support_x) and a.classes == b.classes
    result = train(cfg, progress=False)
    assert result.state.iteration == cfg.optim.iterations
    with pytest.raises(ConfigError, match="every class is a validation or test class"):
        build_run_data(tiny_config(manifest, tmp_path / "run2", cache, data__mix=[
            {"corpus": str(tone_manifest(tmp_path / "held", labels=range(4, 8)))}]))
    with pytest.raises(ConfigError, match="weights must be >= 0"):
        tiny_config(manifest, tmp_path / "run3", cache, data__weight=-1.0,
                    data__mix=[{"corpus": str(other)}])


def test_pre_train_then_meta_train(manifest, cache, tmp_path):
    """``optim.pretrain_iterations``: the body meta-training starts from is the one a plain
    classifier of the training classes learned, not the random initialisation."""
    from metavox.pipeline.build import build_run_data
    from metavox.pipeline.train import pretrain_body

    cfg = tiny_config(manifest, tmp_path / "run", cache, optim__pretrain_iterations=5)
    data = build_run_data(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.input_shape, cfg.episodes.ways)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pretrain_body(cfg, model, data)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("body.") for k in changed)
    assert any(k.endswith("weight") for k in changed)
    first = train(cfg, progress=False)
    again = train(tiny_config(manifest, tmp_path / "again", cache,
                              optim__pretrain_iterations=5), progress=False)
    plain = train(tiny_config(manifest, tmp_path / "plain", cache), progress=False)
    p1, p2, p0 = (dict(r.algo.model.named_parameters()) for r in (first, again, plain))
    assert all(torch.equal(p1[k], p2[k]) for k in p1)  # deterministic by seed
    assert not all(torch.equal(p1[k], p0[k]) for k in p1)
    with pytest.raises(ConfigError, match="pretrain_iterations must be >= 0"):
        tiny_config(manifest, tmp_path / "bad", cache, optim__pretrain_iterations=-1)


def test_a_saturated_validation_is_a_warning_in_the_log_and_in_selection_json(tmp_path,
                                                                             monkeypatch):
    """Issue 30: validation at 99.8% from the first check, and every adaptation candidate
    within the best one's interval: the choice is noise, and the run says so (a warning on
    stderr, kept in selection.json) with what to do; a run without a selection still warns
    about the checkpoint choice. Validation that discriminates gives no warning."""
    from train_helpers import tone_manifest
    from typer.testing import CliRunner

    from metavox.cli import app
    from metavox.engine.callbacks import Validation
    from metavox.pipeline import select
    from metavox.pipeline.config import to_toml
    from metavox.pipeline.select import SaturatedValidationWarning, saturation_warnings

    fine = [{"inner_lr": 0.1, "eval_steps": 1, "accuracy": 0.9, "ci95": 0.02},
            {"inner_lr": 0.3, "eval_steps": 1, "accuracy": 0.7, "ci95": 0.03}]
    assert saturation_warnings(fine, (3, 0.6)) == [] and saturation_warnings([], None) == []

    class Scored:  # what evaluate_episodes returns, as far as the selection reads it
        def __init__(self, accuracy: float) -> None:
            self.accuracy = accuracy

        def score(self) -> tuple[float, float]:
            return self.accuracy, 0.003

    scores = iter([0.997, 0.998, 0.9975, 0.998])
    monkeypatch.setattr(Validation, "validate", lambda self, trainer: (0.998, 0.004))
    monkeypatch.setattr(select, "evaluate_episodes", lambda *a, **k: Scored(next(scores)))
    manifest = tone_manifest(tmp_path / "tones", per=4)
    cfg = tiny_config(manifest, tmp_path / "sel", tmp_path / "cache",
                      validation={"every": 3, "episodes": 2, "checkpoint_every": 3,
                                  "select_inner_lr": [0.1, 0.3], "select_eval_steps": [1, 2]})
    with pytest.warns(SaturatedValidationWarning, match="validation cannot discriminate"):
        result = train(cfg, progress=False)
    (message,) = result.selection.warnings
    assert "99.8% at the first check (iteration 3)" in message
    assert "all 4 inner_lr x eval_steps candidates scored 99.7-99.8%" in message
    assert "more ways or fewer shots" in message
    saved = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert saved["warnings"] == [message]
    # no selection: the checkpoint choice alone, in the log of `metavox train`
    config = tmp_path / "plain.toml"
    config.write_text(to_toml(tiny_config(manifest, tmp_path / "plain",
                                          tmp_path / "cache").to_dict()))
    res = CliRunner().invoke(app, ["train", "-c", str(config), "--quiet"])
    assert res.exit_code == 0, res.output
    assert res.stderr.startswith("warning: validation cannot discriminate: validation "
                                 "accuracy was already 99.8% at the first check")
    assert "candidates" not in res.stderr and not (tmp_path / "plain" / "selection.json").exists()
