"""The same entry point under `torchrun --standalone` (no --local): each rank reads
RANK/WORLD_SIZE/MASTER_* from the env, and the run matches single-process SGD exactly
as the --local run does (tests/test_runtime_bsp.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from runtime.server import load_checkpoint  # noqa: E402
from runtime.testing import reference_bsp_sgd, spec_args, write_specs  # noqa: E402
from traces.jsonl import read_trace  # noqa: E402


@pytest.mark.slow
def test_torchrun_standalone_run_matches_single_process_sgd(tmp_path):
    workers = [("w0", 32, 128), ("w1", 32, 128)]
    write_specs(tmp_path, workers, sync="bsp", exchange="gradient", epochs=2, lr=0.05, momentum=0.9,
                weight_decay=1e-3)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "3",
           "-m", "hybridps", "run", *map(str, spec_args(tmp_path)), "--out", str(out), "--eval-every", "0",
           "--eval-samples", "200", "--worker-timeout", "30"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    got = load_checkpoint(out / "checkpoint.pt")["params"]
    ref = reference_bsp_sgd(workers, 2, 0.05, 0.9, 1e-3)
    assert float((got - ref).abs().max()) < 1e-5
    tr = read_trace(out / "trace.jsonl")
    assert tr.source == "runtime" and len(tr.of_kind("update")) == 2 * 8
    assert {c["worker"] for c in tr.of_kind("compute")} == {"w0", "w1"}
