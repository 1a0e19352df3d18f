"""The SimPy model of a heterogeneous parameter-server cluster (never imports torch).

Public API (other packages code against this):

    from sim import simulate, SimResult
    result = simulate(cluster, job, plan, seed=None, record=False, trace=None)
    result.makespan_s; result.summary()  # the `simulate --json` dict of docs/formats.md

Layout: `predictor` (compute/transfer/apply times and wire bytes), `network` (fluid
max-min fair share per direction), `ps` (parameter server), `worker` (the worker
process), `metrics` (counters, trace recorder, SimResult), `engine` (wiring and
phases). The timeline PNG is `traces.gantt` (it reads trace records only).
"""

from sim.engine import Simulation, simulate, trace_header
from sim.metrics import SimResult

__all__ = ["simulate", "SimResult", "Simulation", "trace_header"]
