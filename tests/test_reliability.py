"""Reliability: `metavox train` killed at random moments resumes to the same parameters bit
for bit, checkpoints are never half-written, and concurrent writers (two trainings into one
run folder, two processes filling one feature cache) never corrupt anything.

Everything runs on generated tones (no data folder needed), in subprocesses, as a user
would run the commands.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_config, tone_manifest

from metavox.pipeline.config import to_toml
from metavox.storage import load_checkpoint

ITERATIONS = 16
#: checkpoint names train writes; atomic_path writes them as hidden ``.NAME.XXXX.tmp``
CHECKPOINTS = ("latest.safetensors", "best.safetensors")


@dataclass
class Workspace:
    """A tiny run config on generated tones, and the environment its subprocesses get."""

    root: Path
    config: Path
    env: dict[str, str]

    def train(self, out: Path, *, resume: bool = False) -> subprocess.Popen:
        """Start `metavox train` into ``out`` (with ``--resume``)."""
        cmd = [sys.executable, "-m", "metavox", "train", "-c", str(self.config),
               "--no-progress", "--out", str(out)] + (["--resume"] if resume else [])
        return subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("reliability")
    manifest = tone_manifest(root / "data")
    # an MLP with a wide layer: cheap iterations, but 12 MB checkpoints whose write takes
    # long enough (~10 ms) for a kill to land inside it
    cfg = tiny_config(manifest, root / "unused", root / "cache",
                      model={"name": "mlp", "options": {"hidden": [1024]}},
                      optim={"iterations": ITERATIONS, "warmup": 2, "lr": 0.01},
                      validation={"every": 4, "episodes": 2, "checkpoint_every": 2})
    config = root / "run.toml"
    config.write_text(to_toml(cfg.to_dict()))
    # one thread: the same float arithmetic in every process, and room for the other tests
    env = {**os.environ, "METAVOX_CACHE": str(root / "metavox-cache"), "OMP_NUM_THREADS": "1"}
    return Workspace(root, config, env)


@dataclass
class Reference:
    """An uninterrupted run: its folder, and the seconds it trained (from taking the run
    folder to its end)."""

    out: Path
    seconds: float


@pytest.fixture(scope="module")
def reference(work) -> Reference:
    out = work.root / "reference"
    out.mkdir()
    proc = work.train(out)
    assert poll(proc, lambda: holds_lock(out, proc.pid))
    start = time.monotonic()
    stdout, stderr = proc.communicate(timeout=300)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, stderr
    assert f"trained maml for {ITERATIONS} iterations" in stdout
    return Reference(out, seconds)


def checkpoint_temps(folder: Path) -> set[str]:
    """The hidden temporary files of checkpoints being written in ``folder``."""
    return {n for n in os.listdir(folder) if n.endswith(".tmp")
            and any(n.startswith(f".{c}.") for c in CHECKPOINTS)}


def holds_lock(folder: Path, pid: int) -> bool:
    """Whether process ``pid`` holds ``folder``'s run lock (it has started training)."""
    try:
        return (folder / ".lock").read_text().strip() == str(pid)
    except OSError:
        return False


def poll(proc: subprocess.Popen, until: Callable[[], bool], timeout: float = 120) -> bool:
    """Wait until ``until()`` holds (True) or ``proc`` ends (False), polling every 0.2 ms."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if until():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.0002)
    raise TimeoutError("the training process neither got there nor ended")


def assert_same_checkpoints(a: Path, b: Path) -> None:
    """Every tensor (parameters, optimiser moments, RNG state) and the training state of the
    final and best checkpoints in run folders ``a`` and ``b`` are equal, bit for bit."""
    for name in CHECKPOINTS:
        x, y = load_checkpoint(a / name), load_checkpoint(b / name)
        assert sorted(x.tensors) == sorted(y.tensors), name
        different = [k for k in x.tensors if not torch.equal(x.tensors[k], y.tensors[k])]
        assert not different, (name, different)
        assert x.meta["state"] == y.meta["state"], name


def kill_at(proc: subprocess.Popen, out: Path, kind: str, at: float,
            left: set[str]) -> bool:
    """SIGKILL ``proc`` (training into ``out``) as ``at``-th checkpoint write begins (kind
    ``"write"``; ``left``: temporary files already there) or ``at`` seconds after it took
    the run folder (``"time"``: data loaded, training begun); False if it finished first."""
    if kind == "write":
        seen: set[str] = set()

        def nth_write() -> bool:
            seen.update(checkpoint_temps(out) - left)
            return len(seen) >= at

        fired = poll(proc, nth_write)
    else:
        fired = poll(proc, lambda: holds_lock(out, proc.pid))
        if fired:
            try:
                proc.wait(timeout=at)
                fired = False
            except subprocess.TimeoutExpired:
                pass
    if fired:
        proc.send_signal(signal.SIGKILL)
    return fired


def test_killed_training_resumes_bit_identically(work, reference):
    """SIGKILL at six seeded random moments of a 16-iteration run, three of them as a
    checkpoint is being written (when its temporary file appears), each followed by
    ``--resume`` (or a fresh start before any checkpoint): every checkpoint in the folder
    loads after every kill, and the finished run equals an uninterrupted one bit for bit.
    ``METAVOX_TEST_KILL_SEED`` picks other moments (default 16)."""
    rng = random.Random(int(os.environ.get("METAVOX_TEST_KILL_SEED", "16")))
    kinds = ["write", "write", "write", "time", "time", "time"]
    rng.shuffle(kinds)
    out = work.root / "killed"
    out.mkdir()
    kills: list[tuple[str, float, bool, int]] = []
    left: set[str] = set()  # temporary files killed writes left behind
    done = 0  # iterations in the latest checkpoint
    for kind in kinds:
        # a moment in what is left of the run: one of its checkpoint writes, or a time
        rest = (ITERATIONS - done) / ITERATIONS
        at = (rng.randint(1, max(1, (ITERATIONS - done) // 2)) if kind == "write" else
              rng.uniform(0.05, 0.9) * rest * reference.seconds)
        proc = work.train(out, resume=done > 0)
        fired = kill_at(proc, out, kind, at, left)
        _, stderr = proc.communicate(timeout=60)
        assert fired or proc.returncode == 0, stderr  # unkilled, it finished the run
        new = checkpoint_temps(out) - left  # one left behind: killed inside the write
        left |= new
        for path in out.glob("*.safetensors"):  # never half-written
            load_checkpoint(path)
        latest = out / "latest.safetensors"
        done = load_checkpoint(latest).meta["state"]["iteration"] if latest.is_file() else 0
        if fired:
            kills.append((kind, round(at, 3), bool(new), done))
    proc = work.train(out, resume=True)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert f"trained maml for {ITERATIONS} iterations" in stdout
    print(f"kills (kind, moment, inside a checkpoint write, iteration saved): {kills}")
    assert len(kills) >= 4 and sum(k[2] for k in kills) >= 1, kills
    assert_same_checkpoints(reference.out, out)
    # the resumed run removed the temporary files the kills left behind: nothing else there
    assert sorted(os.listdir(out)) == sorted(os.listdir(reference.out))


def test_a_second_training_into_a_busy_folder_is_refused(work, reference):
    """While one `metavox train` holds a run folder (stopped there with SIGSTOP, so the race
    is certain), a second one into it stops with one line naming the holder, exit status 1;
    the first then finishes exactly as if alone."""
    out = work.root / "busy"
    first = work.train(out)
    assert poll(first, lambda: holds_lock(out, first.pid))
    first.send_signal(signal.SIGSTOP)
    try:
        second = work.train(out)
        _, stderr = second.communicate(timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 1
    assert stderr.strip().splitlines() == [
        f"error: {out} is in use by another metavox process (pid {first.pid}): wait for it "
        "to finish, or write to another folder"]
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert_same_checkpoints(reference.out, out)


RACE = """
import hashlib, json, pickle, sys, time
from pathlib import Path
from metavox.audio.features import FrontendConfig
from metavox.data import build_feature_store, load_corpus

manifest, cache, ready, go = sys.argv[1:]
corpus = load_corpus(manifest)
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.0005)
store = build_feature_store(corpus, FrontendConfig(n_mels=20, duration=0.5), cache, workers=0,
                            progress=True)
inode = (store.path / "features.npy").stat().st_ino  # the file it got
sha = hashlib.sha256(store.take(range(len(store))).tobytes()).hexdigest()
# then reopen it by path for a while, as DataLoader workers do, while the other one finishes
end, reads = time.monotonic() + 0.5, 0
while time.monotonic() < end:
    again = pickle.loads(pickle.dumps(store))
    assert hashlib.sha256(again.take(range(len(again))).tobytes()).hexdigest() == sha
    reads += 1
print(json.dumps({"path": str(store.path), "rows": len(store), "sha": sha, "inode": inode}))
"""


def test_two_processes_filling_one_feature_cache(work, tmp_path):
    """Two processes released at the same instant build the features of the same corpus
    into the same cache folder, three times over: both succeed with the same complete entry,
    equal to one built alone, which neither replaced under the other (same file, reread by
    path meanwhile), and nothing else is left in the cache. One builds, the other waits."""
    import hashlib
    import json

    from metavox.audio.features import FrontendConfig
    from metavox.data import build_feature_store, load_corpus

    manifest = tone_manifest(tmp_path / "data", per=20)
    alone = build_feature_store(load_corpus(str(manifest)),
                                FrontendConfig(n_mels=20, duration=0.5), tmp_path / "alone",
                                workers=0)
    want = hashlib.sha256(alone.take(range(len(alone))).tobytes()).hexdigest()
    waits = []
    for round_ in range(3):
        cache, go = tmp_path / f"cache{round_}", tmp_path / f"go{round_}"
        ready = [tmp_path / f"ready{round_}.{i}" for i in range(2)]
        procs = [subprocess.Popen([sys.executable, "-c", RACE, str(manifest), str(cache),
                                   str(r), str(go)], env=work.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for r in ready]
        end = time.monotonic() + 120
        while not all(r.exists() for r in ready) and time.monotonic() < end:
            time.sleep(0.001)
        go.touch()
        results, waited = [], 0
        for p in procs:
            stdout, stderr = p.communicate(timeout=300)
            assert p.returncode == 0, stderr
            results.append(json.loads(stdout))
            waited += "waiting for another process building" in stderr
        entry = Path(results[0]["path"])
        inode = (entry / "features.npy").stat().st_ino
        assert results[0] == results[1] == {"path": str(entry), "rows": len(alone),
                                            "sha": want, "inode": inode}, round_
        assert list(cache.iterdir()) == [entry] and (entry / "index.json").is_file()
        waits.append(waited)
    print(f"rounds in which one process waited for the other's build: {sum(waits)} of 3")
    assert max(waits) == 1, waits  # one built while the other waited (not both building)


def edited(src: Path, dest: Path, **changes) -> Path:
    """A copy of checkpoint ``src`` at ``dest`` with metadata entries replaced (``frontend``
    given as a dict of front-end settings to change), re-saved by metavox."""
    from metavox.storage import save_checkpoint

    ckpt = load_checkpoint(src)
    for key, value in changes.items():
        if key == "frontend":
            ckpt.meta["frontend"] = {**ckpt.meta["frontend"], **value}
        else:
            ckpt.meta[key] = value
    return save_checkpoint(dest, ckpt)


def broken_checkpoints(good: Path, folder: Path, audio: Path) -> dict[Path, str]:
    """Unusable variants of checkpoint ``good`` in ``folder`` (one of them a copy of the
    ``audio`` file), each with (a fragment of) the message it must give."""
    from safetensors.torch import save_file

    folder.mkdir()
    v = {"version": 2, "metavox_version": "0.9.0"}
    cases = {
        edited(good, folder / "newer.safetensors", **v):
            "checkpoint format version 2 (written by metavox 0.9.0); this metavox (0.1.0) "
            "reads format version 1: upgrade metavox",
        edited(good, folder / "older.safetensors", version=0, metavox_version="0.0.1"):
            "checkpoint format version 0 (written by metavox 0.0.1); this metavox (0.1.0) "
            "reads format version 1 only",
        edited(good, folder / "foreign-front-end.safetensors",
               frontend={"kind": "wav2vec2"}):
            "saved with a front-end this metavox cannot build (kind must be one of",
        edited(good, folder / "other-front-end.safetensors", frontend={"n_mels": 40}):
            "saved with a front-end (n_mels 40, config 20) other than the one its config "
            "makes",
    }
    data = good.read_bytes()
    truncated = folder / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    cases[truncated] = "not a readable safetensors checkpoint"
    wav = folder / "clip.wav"
    wav.write_bytes(audio.read_bytes())
    cases[wav] = "not a readable safetensors checkpoint"
    plain = folder / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))
    cases[plain] = "safetensors file without metavox metadata"
    return cases


def test_unusable_checkpoints_exit_2_and_write_nothing(work, reference, tmp_path):
    """Checkpoints of another format version, with a front-end this metavox does not have
    or other than their config's, truncated, not safetensors at all, or safetensors without
    metavox metadata: `metavox evaluate`, `adapt` and `predict` each stop with one line
    saying why, exit status 2, and write nothing. A file from another metavox release in
    the same format version is used as it is."""
    from typer.testing import CliRunner

    from metavox.cli import app

    runner = CliRunner()
    examples = tmp_path / "examples"
    for word, label in (("hi", "6"), ("ho", "7")):
        (examples / word).mkdir(parents=True)
        for i in range(2):
            clip = work.root / "data" / "clips" / f"{label}_a_{i}.wav"
            (examples / word / clip.name).write_bytes(clip.read_bytes())
    learner = tmp_path / "words.safetensors"
    res = runner.invoke(app, ["adapt", str(reference.out), "--examples", str(examples),
                              "--out", str(learner)])
    assert res.exit_code == 0, res.output
    clip = examples / "hi" / "6_a_0.wav"
    trained = broken_checkpoints(reference.out / "best.safetensors", tmp_path / "trained", clip)
    adapted = broken_checkpoints(learner, tmp_path / "adapted", clip)
    commands = {
        "evaluate": (trained, lambda p: ["evaluate", str(p), "--episodes", "2",
                                         "--baselines", "", "--no-progress"]),
        "adapt": (trained, lambda p: ["adapt", str(p), "--examples", str(examples),
                                      "--out", str(tmp_path / "out.safetensors")]),
        "predict": (adapted, lambda p: ["predict", str(p), str(clip)]),
    }
    seen = 0
    for name, (cases, argv) in commands.items():
        for path, message in cases.items():
            before = sorted(path.parent.iterdir())
            res = runner.invoke(app, argv(path))
            assert res.exit_code == 2, (name, path.name, res.output)
            assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"error: {path}: ")
            assert message in res.stderr, (name, path.name, res.stderr)
            assert sorted(path.parent.iterdir()) == before  # no report, no output
            assert not (tmp_path / "out.safetensors").exists()
            seen += 1
    assert seen == 3 * 7
    # another release, same format version: evaluated, adapted and used as it is
    other = edited(reference.out / "best.safetensors", tmp_path / "release.safetensors",
                   metavox_version="0.0.1")
    res = runner.invoke(app, ["evaluate", str(other), "--episodes", "2", "--baselines", "",
                              "--no-progress", "--json", "--report", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    other = edited(learner, tmp_path / "release-words.safetensors", metavox_version="9.0.0")
    res = runner.invoke(app, ["predict", str(other), str(clip), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["word"] in ("hi", "ho", "unknown")


def test_checkpoint_format_versions(tmp_path):
    """Format version 1 loads, whatever metavox release wrote it; any other version, a
    version that is not an integer, or none at all is refused naming both versions."""
    from safetensors.torch import save_file

    from metavox.storage import FORMAT, VERSION, Checkpoint, CheckpointError, save_checkpoint

    path = save_checkpoint(tmp_path / "c.safetensors",
                           Checkpoint({"w": torch.ones(2)}, {"metavox_version": "7.0"}))
    ckpt = load_checkpoint(path)
    assert ckpt.meta["version"] == VERSION == 1 and ckpt.meta["metavox_version"] == "7.0"
    assert load_checkpoint(save_checkpoint(tmp_path / "d.safetensors",
                                           Checkpoint({"w": torch.ones(2)}))
                           ).meta["metavox_version"] == "0.1.0"  # the writer, recorded
    for version, words in [(2, "format version 2; this metavox (0.1.0) reads format version "
                               "1: upgrade"),
                           ("1", "format version '1'; this metavox (0.1.0) reads format "
                                 "version 1 only"),
                           (None, "format version None; this metavox")]:
        meta = {"format": FORMAT} | ({} if version is None else {"version": version})
        save_file({"w": torch.ones(2)}, str(path), metadata={"metavox": json.dumps(meta)})
        with pytest.raises(CheckpointError, match=re.escape(words)):
            load_checkpoint(path)
