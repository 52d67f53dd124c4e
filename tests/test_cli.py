"""The pipeline commands through typer's runner, on a tiny real-speech config."""

from __future__ import annotations

import json
import shutil

import pytest
from train_helpers import fsdd_manifest, tiny_config
from typer.testing import CliRunner

from metavox.cli import app
from metavox.pipeline.config import to_toml

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    manifest = fsdd_manifest(shared_data, root / "data")
    cfg = tiny_config(manifest, root / "run", root / "cache",
                      evaluation={"episodes": 4, "shots": [1], "queries": 2, "max_steps": 2,
                                  "baselines": ["scratch"], "finetune_all_steps": 2})
    path = root / "run.toml"
    path.write_text(to_toml(cfg.to_dict()))
    res = runner.invoke(app, ["train", "--config", str(path), "--no-progress",
                              "--set", "optim.iterations=3"])
    assert res.exit_code == 0, res.output
    assert "trained maml for 3 iterations" in res.output
    return root


def test_every_command_has_help():
    for cmd in (["train"], ["evaluate"], ["adapt"], ["predict"], ["models"], ["data", "scan"]):
        res = runner.invoke(app, [*cmd, "--help"])
        assert res.exit_code == 0 and "Usage" in res.output, cmd
    assert "Example" in runner.invoke(app, ["evaluate", "--help"]).output


def test_models_lists_the_registry():
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and "conv4" in res.output and "dscnn" in res.output


def test_evaluate_prints_table_and_writes_report(trained):
    res = runner.invoke(app, ["evaluate", str(trained / "run"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "| maml |" in res.output and "| scratch |" in res.output
    assert (trained / "run" / "report" / "report.md").is_file()
    res = runner.invoke(app, ["evaluate", str(trained / "run"), "--json", "--baselines", "",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert [s["method"] for s in json.loads(res.stdout)["scores"]] == ["maml"]


def test_adapt_and_predict_own_words(trained, shared_data, tmp_path):
    rec = shared_data / "fsdd" / "recordings"
    examples = tmp_path / "my words"
    for word, digit in (("lights on", 8), ("música", 9)):
        (examples / word).mkdir(parents=True)
        for i in range(3):
            shutil.copy(rec / f"{digit}_nicolas_{i}.wav", examples / word / f"{i}.wav")
    out = tmp_path / "mine.safetensors"
    res = runner.invoke(app, ["adapt", str(trained / "run"), "--examples", str(examples),
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "2 words" in res.output and out.is_file()
    files = [str(rec / "8_nicolas_40.wav"), str(rec / "9_nicolas_40.wav")]
    res = runner.invoke(app, ["predict", str(out), *files, "--json"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.output.strip().splitlines()]
    assert [sorted(x["probabilities"]) for x in lines] == [["lights on", "música"]] * 2
    assert all(abs(sum(x["probabilities"].values()) - 1) < 1e-5 for x in lines)
    res = runner.invoke(app, ["predict", str(out), files[0]])
    assert res.exit_code == 0 and ("lights on" in res.output or "música" in res.output)


def test_bad_input_gets_clear_errors(trained, tmp_path):
    """Exit 2 for a config, setting or checkpoint that cannot be used (nothing done), 1
    for data that cannot be used."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlr = 0.1\nlearning_rate = 3\n")
    res = runner.invoke(app, ["train", "--config", str(bad)])
    assert res.exit_code == 2 and "learning_rate" in res.output and "accepted" in res.output
    bad.write_text('[episodes]\nways = "five"\n')
    res = runner.invoke(app, ["train", "--config", str(bad)])
    assert res.exit_code == 2 and "episodes.ways" in res.output and "int" in res.output
    res = runner.invoke(app, ["train", "--config", str(tmp_path / "nope.toml")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(app, ["train", "--set", "model.name=vgg19"])
    assert res.exit_code == 2 and "vgg19" in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["train", "--set", f'data.corpus="{empty}"', "--no-progress"])
    assert res.exit_code == 1 and "error:" in res.output
    res = runner.invoke(app, ["evaluate", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(app, ["evaluate", str(trained / "run"), "--precision", "half",
                              "--no-progress"])
    assert res.exit_code == 2 and "precision" in res.output and "half" in res.output
    res = runner.invoke(app, ["evaluate", str(trained / "run"), "--device", "gpu0",
                              "--no-progress"])
    assert res.exit_code == 2 and "not a device name" in res.output
    # enrollment: one word only, unreadable clips, a training checkpoint given to predict
    one = tmp_path / "one"
    (one / "hello").mkdir(parents=True)
    (one / "hello" / "a.wav").write_bytes(b"RIFF....garbage")
    res = runner.invoke(app, ["adapt", str(trained / "run"), "--examples", str(one)])
    assert res.exit_code == 1 and "at least 2" in res.output
    (one / "bye").mkdir()
    (one / "bye" / "b.wav").write_bytes(b"")
    res = runner.invoke(app, ["adapt", str(trained / "run"), "--examples", str(one)])
    assert res.exit_code == 1 and "no readable recording" in res.output
    res = runner.invoke(app, ["predict", str(trained / "run" / "best.safetensors"), "x.wav"])
    assert res.exit_code == 2 and "not an adapted model" in res.output
    assert not (tmp_path / "adapted.safetensors").exists()


def test_impossible_sizes_exit_2_and_write_nothing(trained, tmp_path):
    """Zero or negative sizes and more ways than the split has classes: exit 2, a message
    naming the setting, and no run folder."""
    config = trained / "run.toml"
    cases = [("episodes.ways=0", "episodes.ways must be >= 1"),
             ("episodes.shots=-1", "episodes.shots must be >= 1"),
             ("algorithm.steps=0", "algorithm.steps must be >= 1"),
             ("evaluation.episodes=0", "evaluation.episodes"),
             ("episodes.ways=9", "9-way")]  # the tiny split has 4 training classes
    for i, (setting, message) in enumerate(cases):
        out = tmp_path / f"run{i}"
        res = runner.invoke(app, ["train", "--config", str(config), "--no-progress",
                                  "--set", setting, "--set", f'out="{out}"'])
        assert res.exit_code == 2 and message in res.output, (setting, res.output)
        assert not out.exists(), setting
