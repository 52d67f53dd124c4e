"""Evaluation: the meta-trained model and the baselines on the same episodes, a report."""

from __future__ import annotations

import json

import pytest
from train_helpers import fsdd_manifest, tiny_config

from metavox.engine import confidence_interval
from metavox.pipeline.evaluate import evaluate
from metavox.pipeline.report import results_table, write_report
from metavox.pipeline.train import train

TINY_EVAL = {"episodes": 6, "shots": [1, 2], "queries": 2, "max_steps": 3, "pretrain_iterations": 5,
             "finetune_steps": 5, "finetune_all_steps": 3}


@pytest.fixture(scope="module")
def run_dir(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    manifest = fsdd_manifest(shared_data, root / "data")
    cfg = tiny_config(manifest, root / "run", root / "cache", evaluation=TINY_EVAL)
    train(cfg, progress=False)
    return root / "run"


def test_confidence_interval():
    mean, ci = confidence_interval([0.0, 1.0] * 50)
    assert mean == pytest.approx(0.5)
    assert ci == pytest.approx(1.96 * 0.50252 / 10, rel=1e-3)


def test_evaluate_runs_baselines_on_the_same_episodes(run_dir, tmp_path):
    report = evaluate(run_dir)
    methods = {s.method for s in report.scores}
    assert methods == {"maml", "protonet", "finetune-head", "finetune-all", "scratch"}
    assert {s.shots for s in report.scores} == {1, 2}
    assert all(s.episodes == 6 and 0 <= s.accuracy <= 1 for s in report.scores)
    maml = next(s for s in report.scores if s.method == "maml" and s.shots == 1)
    assert sorted(maml.by_step) == [0, 1, 2, 3]  # the accuracy-against-steps curve
    assert maml.accuracy == pytest.approx(maml.by_step[2][0])  # headline: eval_steps = 2
    assert report.labels == ["6", "7"]
    # baselines were trained once and cached in the run folder
    assert (run_dir / "baselines" / "pretrained.safetensors").is_file()
    assert (run_dir / "baselines" / "protonet" / "best.safetensors").is_file()
    again = evaluate(run_dir, shots=[1], baselines=["protonet"])
    p1 = next(s for s in report.scores if s.method == "protonet" and s.shots == 1)
    p2 = next(s for s in again.scores if s.method == "protonet")
    assert p1.accuracy == p2.accuracy  # same episodes, same cached baseline
    md = write_report(report, tmp_path / "report")
    text = md.read_text()
    assert "| maml |" in text and "±" in text and "6 episodes" in text
    assert (tmp_path / "report" / "accuracy_vs_steps.png").stat().st_size > 1000
    assert (tmp_path / "report" / "accuracy_vs_shots.png").is_file()
    data = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert len(data["scores"]) == 10
    assert results_table(report).count("\n") == 6


def test_evaluate_on_another_corpus_with_named_labels(run_dir, shared_data):
    report = evaluate(run_dir, data="fsdd", root=str(shared_data / "fsdd"),
                      labels=["8", "9"], shots=[1], episodes=4, baselines=[], max_steps=0)
    assert report.labels == ["8", "9"] and [s.method for s in report.scores] == ["maml"]
    with pytest.raises(ValueError, match="not in"):
        evaluate(run_dir, data="fsdd", root=str(shared_data / "fsdd"), labels=["eleven"],
                 baselines=[])


def test_bfloat16_evaluation_uses_the_same_episodes(run_dir):
    from metavox.pipeline.config import ConfigError

    kw = dict(shots=[1], episodes=6, baselines=["finetune"], max_steps=0)
    fp32 = evaluate(run_dir, **kw)
    bf16 = evaluate(run_dir, precision="bfloat16", device="cpu", **kw)
    assert [s.method for s in bf16.scores] == [s.method for s in fp32.scores]
    for a, b in zip(fp32.scores, bf16.scores, strict=True):
        assert a.episodes == b.episodes == 6 and 0 <= b.accuracy <= 1
        # bfloat16 rounding may flip a few of 6 x 4 queries, not the whole result
        assert abs(a.accuracy - b.accuracy) <= 0.25
    with pytest.raises(ConfigError, match="precision"):
        evaluate(run_dir, precision="int8", **kw)


def test_speaker_protocol_with_no_adaptation_baseline(shared_data, tmp_path):
    manifest = fsdd_manifest(shared_data, tmp_path / "data")
    cfg = tiny_config(manifest, tmp_path / "run", tmp_path / "cache",
                      data={"corpus": str(manifest), "split": "speaker",
                            "test_speakers": ["theo"], "val_fraction": 0.0,
                            "cache_dir": str(tmp_path / "cache")},
                      episodes={"protocol": "speaker", "ways": 3, "shots": 1, "queries": 2,
                                "meta_batch": 2},
                      optim={"iterations": 2, "warmup": 1},
                      validation={"every": 2, "episodes": 0, "checkpoint_every": 2},
                      evaluation={**TINY_EVAL, "shots": [1], "queries": 2,
                                  "baselines": ["noadapt"]})
    train(cfg, progress=False)
    report = evaluate(tmp_path / "run")
    methods = [s.method for s in report.scores]
    assert methods == ["maml", "no adaptation"]
    assert all(0 <= s.accuracy <= 1 and s.episodes == 6 for s in report.scores)


def test_evaluate_takes_the_test_time_inner_lr_and_steps_and_says_where_they_came_from(
        tmp_path):
    """Issue 30: a checkpoint saved mid-run (no selection in it) adapts with the training
    config's settings; after the selection, with the chosen steps (the inner lr was not a
    candidate: still the config's); --inner-lr / --steps override either. Every report
    (returned, JSON, Markdown, the command's output) names the values and their source."""
    from train_helpers import tone_manifest
    from typer.testing import CliRunner

    from metavox.cli import app

    cfg = tiny_config(tone_manifest(tmp_path / "tones", per=4), tmp_path / "run",
                      tmp_path / "cache",
                      validation={"every": 3, "episodes": 2, "checkpoint_every": 3,
                                  "select_eval_steps": [1, 3]})
    train(cfg, progress=False, stop_after=3)  # interrupted: latest has no selection
    kw = dict(shots=[1], episodes=2, baselines=[], max_steps=4)
    mid = evaluate(tmp_path / "run" / "latest.safetensors", **kw)
    assert mid.adaptation == {"algorithm": "maml", "inner_lr": 0.3, "steps": 2,
                              "inner_lr_source": "config", "steps_source": "config"}
    result = train(cfg, progress=False, resume=True)
    chosen = result.selection.eval_steps
    done = evaluate(tmp_path / "run", **kw)
    assert (done.adaptation["steps"], done.adaptation["steps_source"]) == (chosen, "selection")
    assert done.adaptation["inner_lr_source"] == "config"
    told = evaluate(tmp_path / "run", inner_lr=0.2, steps=4, **kw)
    assert told.adaptation == {"algorithm": "maml", "inner_lr": 0.2, "steps": 4,
                               "inner_lr_source": "command line",
                               "steps_source": "command line"}
    (score,) = told.scores
    assert score.accuracy == pytest.approx(score.by_step[4][0])  # the headline: 4 steps
    md = write_report(told, tmp_path / "report").read_text()
    assert ("Test-time adaptation of maml: inner learning rate 0.2 (command line), 4 inner "
            "steps (command line).") in md
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert saved["adaptation"] == told.adaptation
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--inner-lr", "0.2",
                              "--steps", "4", "--episodes", "2", "--shots", "1",
                              "--baselines", "", "--quiet", "--report", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "inner learning rate 0.2 (command line), 4 inner steps (command line)" in res.stdout
    assert res.stderr == ""  # --quiet: no progress at all
    res = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--episodes", "2",
                              "--shots", "1", "--baselines", "", "--no-progress",
                              "--report", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert f"{chosen} inner steps (selection)" in res.stdout
    # --no-progress: no bars, but plain progress lines (here the closing one)
    assert "evaluate maml 1-shot: 1/1 batch (100%)" in res.stderr and "\r" not in res.stderr
    res = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--steps", "-1", "--quiet"])
    assert res.exit_code == 2 and "--steps must be >= 0" in res.stderr


def test_test_time_settings_an_algorithm_cannot_take_are_errors():
    from metavox.meta import create_algorithm
    from metavox.models import create_model
    from metavox.pipeline.config import ConfigError, config_from_dict
    from metavox.pipeline.select import set_adaptation

    def algo(name, **kw):
        model = create_model("conv4", num_classes=2, input_shape=(20, 26), channels=4)
        return create_algorithm(name, model, **kw)

    cfg = config_from_dict({"algorithm": {"name": "protonet"}})
    assert set_adaptation(algo("protonet"), cfg, None).describe() == (
        "Test-time adaptation of protonet: no inner loop (no inner learning rate or steps).")
    with pytest.raises(ConfigError, match="protonet has no inner loop"):
        set_adaptation(algo("protonet"), cfg, None, steps=3)
    cfg = config_from_dict({"algorithm": {"name": "metasgd"}})
    learned = set_adaptation(algo("metasgd", steps=2), cfg, None, steps=1)
    assert (learned.inner_lr, learned.inner_lr_source, learned.steps) == (None, "learned", 1)
    with pytest.raises(ConfigError, match="metasgd learns its step sizes"):
        set_adaptation(algo("metasgd"), cfg, None, inner_lr=0.1)
    cfg = config_from_dict({"algorithm": {"name": "mamlpp"}})
    with pytest.raises(ConfigError, match="for 2 steps; give at most 2"):
        set_adaptation(algo("mamlpp", steps=2), cfg, None, steps=5)
    with pytest.raises(ConfigError, match="--inner-lr must be > 0"):
        set_adaptation(algo("maml"), config_from_dict({}), None, inner_lr=0.0)


def test_open_set_on_the_same_episodes(run_dir, tmp_path):
    """--open-set: every adapting method's clip-level open set on the evaluation's own
    episodes, in the report (table, DET plot, JSON) and the command's output."""
    from typer.testing import CliRunner

    from metavox.cli import app

    report = evaluate(run_dir, shots=[2], baselines=["protonet"], open_set=True)
    assert [(o.method, o.shots) for o in report.open_set] == [("maml", 2), ("protonet", 2)]
    pool = report.open_set_pool
    assert pool["test words"] == ["6", "7"] and pool["backgrounds"] > 0
    for o in report.open_set:
        assert o.episodes == 6 and set(o.detection) == {"1%", "0.1%", "0.01%"}
        assert all(0 <= m <= 1 for m, _ in o.detection.values()) and 0 <= o.eer[0] <= 1
        # 2-way episodes of 2 test words: the targets are both words' other clips, the
        # non-targets every validation clip and background, in each episode
        assert o.targets > 0 and o.nontargets >= 6 * pool["backgrounds"]
    again = evaluate(run_dir, shots=[2], baselines=["protonet"], open_set=True)
    assert again.open_set[1].detection == report.open_set[1].detection  # deterministic
    md = write_report(report, tmp_path / "report").read_text()
    assert "## Open set (clip level)" in md and "| protonet | 2 |" in md
    assert (tmp_path / "report" / "open_set_det_2shot.png").stat().st_size > 1000
    data = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert len(data["open_set"]) == 2 and data["open_set"][0]["det"]["far"]
    res = CliRunner().invoke(app, ["evaluate", str(run_dir), "--shots", "1", "--baselines",
                                   "", "--open-set", "--quiet", "-r", str(tmp_path / "r2")])
    assert res.exit_code == 0, res.output
    assert "open set (clip level)" in res.stdout and "| maml | 1 |" in res.stdout


def test_protonet_baseline_on_a_frozen_body_is_the_frozen_nearest_class_mean(tmp_path):
    """A body with no trainable weight (a pretrained base without an adapter) leaves
    ProtoNet nothing to meta-train: the baseline is the frozen features' nearest class
    mean as they come, and nothing is trained or written (the optimizer would refuse an
    empty parameter list)."""
    from types import SimpleNamespace

    import torch
    from torch import nn

    from metavox.pipeline.baselines import _baseline_protonet

    model = nn.Module()
    model.body = nn.Linear(4, 3)
    model.head = nn.Linear(3, 2)
    model.body.requires_grad_(False)
    algo = _baseline_protonet(SimpleNamespace(algo=SimpleNamespace(model=model)), tmp_path,
                              False)
    assert not list(tmp_path.iterdir())
    x = torch.randn(6, 4)
    learner = algo.adapt(x[:4], torch.tensor([0, 0, 1, 1]))
    f = model.body(x[4:])
    protos = torch.stack([model.body(x[:2]).mean(0), model.body(x[2:4]).mean(0)])
    assert torch.equal(learner.predict(x[4:]), torch.cdist(f, protos).argmin(-1))


def test_fine_tuning_everything_on_a_frozen_body_equals_fine_tuning_the_head():
    """With no trainable weight in the body, fine-tuning 'all' is fine-tuning the head
    (it used to fail looking for a body weight to take its dtype from)."""
    import torch
    from torch import nn

    from metavox.meta import FineTune

    torch.manual_seed(0)
    model = nn.Module()
    model.body, model.head = nn.Linear(4, 3), nn.Linear(3, 2)
    model.body.requires_grad_(False)
    x, y = torch.randn(8, 4), torch.tensor([0, 1] * 4)
    batch = (x[None, :4], y[None, :4], x[None, 4:], y[None, 4:])
    algos = {m: FineTune(model, mode=m, steps=5).eval() for m in ("head", "all")}
    got = {m: a(batch).metrics for m, a in algos.items()}
    assert got["all"]["query_loss"] == pytest.approx(got["head"]["query_loss"])
    learners = {m: a.adapt(x[:4], y[:4]) for m, a in algos.items()}
    assert torch.allclose(learners["all"](x[4:]), learners["head"](x[4:]))
