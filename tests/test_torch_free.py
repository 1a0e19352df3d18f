"""Simulation-only users must not need torch: importing the spec, traces, simulator,
solver and the CLI never imports it."""

from __future__ import annotations

import subprocess
import sys


def test_sim_solver_traces_and_cli_do_not_import_torch():
    code = (
        "import sys\n"
        "import hybridps.spec, hybridps.stragglers, traces, traces.chrome, sim, solver\n"
        "from hybridps.cli import build_parser; build_parser()\n"
        "import importlib, pkgutil\n"
        "for pkg in (sim, solver, traces):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print('TORCH', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "TORCH []" in out.stdout
