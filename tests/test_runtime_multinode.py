"""Two torchrun "nodes" on 127.0.0.1, each running `hybridps run` as its ranks (the
multi-node command of docs/runtime.md): the run trains to the same parameters as
`--local` and as single-process SGD (bsp gradient exchange on mlp/synthetic is
deterministic)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from runtime.launch import free_port  # noqa: E402
from runtime.server import load_checkpoint  # noqa: E402
from runtime.testing import reference_bsp_sgd, run_cli, spec_args, write_specs  # noqa: E402
from traces.jsonl import read_trace  # noqa: E402

WORKERS = [("w0", 32, 128), ("w1", 32, 128), ("w2", 32, 128)]  # 1 PS + 3 workers = 4 ranks
LR, MOM, WD = 0.05, 0.9, 1e-3


def _node_cmd(rdzv: str, node_rank: int, nproc: int, port: int, run_args: list[str]) -> list[str]:
    """One node's torchrun command: c10d rendezvous (node order = join order) or the
    static one (--node-rank decides which node holds rank 0, the PS)."""
    if rdzv == "c10d":
        where = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}"]
    else:
        where = ["--node-rank", str(node_rank), "--master-addr", "127.0.0.1", "--master-port", str(port)]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", str(nproc), *where,
            "-m", "hybridps", "run", *run_args]


def _run_two_nodes(rdzv: str, run_args: list[str]) -> list[subprocess.CompletedProcess]:
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    procs = [subprocess.Popen(_node_cmd(rdzv, rank, 2, port, run_args), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for rank in (0, 1)]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=240)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results


@pytest.mark.slow
@pytest.mark.parametrize("rdzv", ["c10d", "static"])
def test_two_nodes_train_to_the_local_runs_parameters(tmp_path, rdzv):
    write_specs(tmp_path, WORKERS, sync="bsp", exchange="gradient", epochs=2, lr=LR, momentum=MOM, weight_decay=WD)
    common = [*map(str, spec_args(tmp_path)), "--eval-every", "0", "--eval-samples", "200", "--worker-timeout", "30"]
    nodes = _run_two_nodes(rdzv, [*common, "--out", str(tmp_path / "nodes")])
    for r in nodes:
        assert r.returncode == 0, r.stderr[-3000:]
    if rdzv == "static":  # --node-rank 0 holds rank 0: the PS prints the run's line
        assert "hybridps run: 1 phase(s)" in nodes[0].stdout and "hybridps run:" not in nodes[1].stdout
    local = run_cli(["run", *common, "--out", tmp_path / "local", "--local"])
    assert local.returncode == 0, local.stderr
    got = load_checkpoint(tmp_path / "nodes" / "checkpoint.pt")["params"]
    want = load_checkpoint(tmp_path / "local" / "checkpoint.pt")["params"]
    assert float((got - want).abs().max()) < 1e-5
    ref = reference_bsp_sgd(WORKERS, 2, LR, MOM, WD)
    assert float((got - ref).abs().max()) < 1e-5
    tr = read_trace(tmp_path / "nodes" / "trace.jsonl")
    assert tr.header["meta"]["world_size"] == 4 and len(tr.of_kind("update")) == 3 * 8
    assert {c["worker"] for c in tr.of_kind("compute")} == {"w0", "w1", "w2"}
