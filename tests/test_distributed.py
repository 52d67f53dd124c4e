"""Distributed meta-training under torchrun (gloo on loopback): the same tasks and the
same parameters as one process, rank 0 alone writes, and a killed rank is survived."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_config

from metavox.data import EpisodeDataset
from metavox.engine.distributed import SINGLE, _buckets, average_metrics, from_environment
from metavox.pipeline.config import to_toml
from metavox.pipeline.evaluate import evaluate
from metavox.pipeline.train import train
from metavox.storage import load_checkpoint

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(config: Path, nproc: int, *extra: str, max_restarts: int = 0,
             wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    """``torchrun --nproc-per-node nproc -m metavox train --config config`` on loopback."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "--max-restarts", str(max_restarts),
           "-m", "metavox", "train", "--config", str(config), "--no-progress", *extra]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def algo_params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).section("algo")


def cancelled_by_batch_norm(name: str) -> bool:
    """A Conv-4 convolution bias: BatchNorm right after it subtracts it again, so its
    gradient is zero up to float noise, and Adam (which divides by the gradient's own
    scale) turns that noise into +-lr steps that differ run to run. It does not change
    the network's outputs, so the comparisons leave it out."""
    return re.fullmatch(r"model\.body\.\d+\.0\.bias", name) is not None


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a
               if not cancelled_by_batch_norm(k))


class CountingSampler:
    """Records which episodes a dataset asks for."""

    def sample_range(self, first, count):
        return list(range(first, first + count))


def test_ranks_draw_disjoint_slices_of_the_global_stream():
    sampler = CountingSampler()
    whole = EpisodeDataset(sampler, 6, 3, start=2)
    parts = [EpisodeDataset(sampler, 6, 3, start=2, rank=r, world=3) for r in range(3)]
    for b in range(3):
        assert sum((p[b] for p in parts), []) == whole[b] == list(range(12 + 6 * b, 18 + 6 * b))
    with pytest.raises(ValueError, match="multiple of the number of ranks"):
        EpisodeDataset(sampler, 4, 1, rank=0, world=3)


def test_buckets_group_by_dtype_and_size():
    ts = [torch.zeros(10), torch.zeros(10), torch.zeros(10, dtype=torch.float64),
          torch.zeros(100)]
    groups = list(_buckets(ts, limit=80))
    assert [len(g) for g in groups] == [2, 1, 1]


def test_single_process_helpers_are_no_ops(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert from_environment() is SINGLE
    assert average_metrics({"loss": 1.5}, SINGLE) == {"loss": 1.5}


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "reptile"])
def test_two_processes_match_one_process_with_the_whole_meta_batch(
        algorithm, manifest, cache, tmp_path):
    overrides = {"episodes__meta_batch": 4, "algorithm__name": algorithm,
                 "optim__iterations": 5, "validation__every": 5, "validation__checkpoint_every": 5}
    one = tiny_config(manifest, tmp_path / "one", cache, **overrides)
    train(one, progress=False)
    two = tiny_config(manifest, tmp_path / "two", cache, **overrides)
    config = tmp_path / "two.toml"
    config.write_text(to_toml(two.to_dict()))
    proc = torchrun(config, 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = algo_params(tmp_path / "one" / "latest.safetensors")
    b = algo_params(tmp_path / "two" / "latest.safetensors")
    assert max_diff(a, b) < 1e-5  # float32 summation order, five Adam steps
    # the weights moved, so the comparison means something
    init = tiny_config(manifest, tmp_path / "init", cache, **{**overrides,
                                                             "optim__iterations": 1})
    train(init, progress=False)
    assert max_diff(a, algo_params(tmp_path / "init" / "latest.safetensors")) > 1e-4
    # rank 0 alone wrote the log, with every iteration once; validation agreed across ranks
    lines = (tmp_path / "two" / "metrics.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in lines[1:]] == [1, 2, 3, 4, 5]
    one_val = (tmp_path / "one" / "metrics.csv").read_text().splitlines()[-1].split(",")[6]
    assert lines[-1].split(",")[6] == one_val


def test_meta_batch_must_split_over_the_ranks(manifest, cache, tmp_path):
    cfg = tiny_config(manifest, tmp_path / "run", cache, episodes__meta_batch=3)
    config = tmp_path / "c.toml"
    config.write_text(to_toml(cfg.to_dict()))
    proc = torchrun(config, 2)
    assert proc.returncode != 0
    assert "cannot be split over 2 processes" in proc.stderr


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_killed_rank_is_restarted_and_training_resumes(manifest, cache, tmp_path):
    overrides = {"episodes__meta_batch": 4, "optim__iterations": 400, "validation__every": 400,
                 "validation__checkpoint_every": 20}
    cfg = tiny_config(manifest, tmp_path / "run", cache, **overrides)
    config = tmp_path / "run.toml"
    config.write_text(to_toml(cfg.to_dict()))
    proc = torchrun(config, 2, max_restarts=1, wait=False)
    latest = tmp_path / "run" / "latest.safetensors"
    deadline = time.monotonic() + 120
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert proc.poll() is None and workers, "training ended before a rank could be killed"
    killed_at = load_checkpoint(latest).meta["state"]["iteration"]
    os.kill(workers[-1], signal.SIGKILL)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert killed_at < 400
    assert "resumed from iteration" in err
    final = load_checkpoint(latest)
    assert final.meta["state"]["iteration"] == 400
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, 401))
    # exact resume: the same parameters as an uninterrupted run
    ref = tiny_config(manifest, tmp_path / "ref", cache, **overrides)
    ref_config = tmp_path / "ref.toml"
    ref_config.write_text(to_toml(ref.to_dict()))
    assert torchrun(ref_config, 2).returncode == 0
    ref_params = algo_params(tmp_path / "ref" / "latest.safetensors")
    assert max_diff(final.section("algo"), ref_params) < 1e-6


def test_sharded_evaluation_equals_one_process(manifest, cache, tmp_path):
    """Two ranks share the meta-test episodes (rank 0 trains the baselines' cache, the
    ranks train the ProtoNet baseline together) and report what one process reports."""
    cfg = tiny_config(manifest, tmp_path / "run", cache, episodes__meta_batch=2)
    train(cfg, progress=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port",
           str(free_port()), "-m", "metavox", "evaluate", str(tmp_path / "run"), "--json",
           "--no-progress", "--episodes", "10"]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shared = json.loads(proc.stdout[proc.stdout.index("{"):])
    # one thread, like each rank: a from-scratch network's near-tied logits can flip with
    # the float summation order of a different thread count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = evaluate(tmp_path / "run", episodes=10).to_dict()
    finally:
        torch.set_num_threads(threads)
    pick = [(s["method"], s["shots"], s["episodes"], round(s["accuracy"], 6),
             round(s["ci95"], 6)) for s in shared["scores"]]
    assert pick == [(s["method"], s["shots"], s["episodes"], round(s["accuracy"], 6),
                     round(s["ci95"], 6)) for s in alone["scores"]]
    assert {"maml", "protonet", "finetune-head"} <= {p[0] for p in pick}
