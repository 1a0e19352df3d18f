"""Fit one cluster cost to a published total: when all a paper gives is a makespan (and
the per-iteration coefficients are already known), the missing time per exchange is the
one number the simulator can still be asked for. Lives in sim/ because it simulates;
trace-based fits are in traces/calibrate.py.
"""

from __future__ import annotations

from hybridps.spec import Cluster, Job, Plan, cluster_from_dict
from sim.engine import simulate


def with_exchange_overhead(cluster: Cluster, overhead_s: float) -> Cluster:
    """The cluster with every worker group's `exchange_overhead_s` set to `overhead_s`."""
    data = cluster.model_dump(mode="json")  # validated again: model_copy would keep the cached worker list
    for g in data["workers"]:
        g["exchange_overhead_s"] = float(overhead_s)
    return cluster_from_dict(data)


def _exchanges_per_worker(plan: Plan) -> int:
    """The most exchanges any worker makes over the plan (epochs x exchanges per worker-epoch)."""
    per: dict[str, int] = {}
    for ph in plan.phases:
        for wa in ph.workers:
            every = ph.exchange_every(wa)
            per[wa.name] = per.get(wa.name, 0) + ph.epochs * -(-wa.iterations_per_epoch // every)
    return max(per.values())


def fit_exchange_overhead_s(cluster: Cluster, job: Job, plan: Plan, measured_s: float,
                            rel_tol: float = 1e-6, max_iter: int = 8) -> tuple[float, float]:
    """The `exchange_overhead_s` (same on every worker) whose simulated makespan is
    `measured_s`; returns (overhead_s, simulated makespan_s). The makespan is piecewise
    linear and increasing in the overhead, so a secant from 0 converges in a few steps.
    Raises ValueError when the cluster is already slower than `measured_s`."""
    x0, m0 = 0.0, simulate(with_exchange_overhead(cluster, 0.0), job, plan).makespan_s
    if m0 > measured_s * (1 + rel_tol):
        raise ValueError(f"the simulated makespan with no overhead ({m0:.1f} s) already exceeds {measured_s:.1f} s")
    x1 = (measured_s - m0) / max(1, _exchanges_per_worker(plan))  # exact when one worker sets the pace
    m1 = simulate(with_exchange_overhead(cluster, x1), job, plan).makespan_s
    for _ in range(max_iter):
        if abs(m1 - measured_s) <= rel_tol * measured_s or m1 == m0:
            break
        x0, m0, x1 = x1, m1, x1 + (measured_s - m1) * (x1 - x0) / (m1 - m0)
        m1 = simulate(with_exchange_overhead(cluster, x1), job, plan).makespan_s
    return x1, m1
