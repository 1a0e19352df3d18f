"""Simulator-ranked search: generate candidates, score them, keep the fastest.

Three stages, because a full simulation of an ImageNet plan is hundreds of thousands of
worker-iterations:

1. **estimate**: every candidate gets the closed-form makespan of
   `solver.candidates.estimate_makespan_s` (microseconds each);
2. **proxy**: the best `proxy_count` by estimate, plus the best of every strategy and the
   uniform baseline, are simulated on a *shortened horizon*: every phase cut to at most
   `proxy_epochs` epochs (default 2); each phase's simulated duration is scaled back to
   its full length with a per-phase affine model (`scale_up`) and the results summed;
3. **full**: the best `full_count` by proxy, plus the uniform baseline, are simulated in
   full; the fastest of those is the answer, so it is never slower (predicted) than the
   baseline, which is always among them.

Scoring is injectable: `scorer(cluster, job, plan, seed) -> summary` where the summary
has `makespan_s` and, for the proxy's per-phase scaling, `phases: [{start_s, end_s}]`
(the `simulate --json` dict). The default runs `sim.simulate`. Scoring runs in worker
processes (`jobs`), results are placed by candidate index, so their order does not
depend on completion order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from hybridps.errors import UserError
from hybridps.spec import Cluster, Job, Plan, cluster_from_dict, job_from_dict, plan_from_dict
from hybridps.progress import progress_bar
from solver.candidates import Candidate, Constraints, generate

Scorer = Callable[[Cluster, Job, Plan, int | None], dict]


def simulate_summary(cluster: Cluster, job: Job, plan: Plan, seed: int | None) -> dict:
    """The default scorer: the discrete-event simulator."""
    from sim import simulate

    return simulate(cluster, job, plan, seed=seed).summary()


def shorten(plan: Plan, proxy_epochs: int) -> Plan:
    """Every phase cut to at most `proxy_epochs` epochs (same workers, sync and LR)."""
    phases = [p.model_copy(update={"epochs": min(p.epochs, proxy_epochs)}) for p in plan.phases]
    return plan.model_copy(update={"phases": phases})


def scale_up(plan: Plan, short: Plan, summary: dict) -> float:
    """Shortened-horizon makespan scaled back to the full plan, phase by phase.

    A phase of E epochs takes about `α + E·β`: β the time per epoch of samples in steady
    state, α a fixed cost (under asp with mini-epochs the phase drains: workers that finish
    a round before the target is reached start another, so a phase overshoots by up to one
    round). β is the mean spacing of the `epoch_end_s` crossings that fall inside the
    shortened phase (needs at least two, hence the default of 2 epochs per phase), α the
    rest of its duration. Without two crossings (or without `epoch_end_s`) the duration is
    scaled linearly.
    """
    phases = summary.get("phases")
    if not phases or len(phases) != len(plan.phases):
        ratio = sum(p.epochs for p in plan.phases) / sum(p.epochs for p in short.phases)
        return float(summary["makespan_s"]) * ratio
    crossings = sorted(summary.get("epoch_end_s") or [])
    total = 0.0
    for ph, full, cut in zip(phases, plan.phases, short.phases):
        start, end = float(ph["start_s"]), float(ph["end_s"])
        duration = end - start
        if full.epochs == cut.epochs:
            total += duration
            continue
        inside = [c for c in crossings if start < c <= end]
        if len(inside) >= 2:
            beta = (inside[-1] - inside[0]) / (len(inside) - 1)
            alpha = duration - cut.epochs * beta
            total += max(alpha + full.epochs * beta, duration)
        else:
            total += duration * full.epochs / cut.epochs
    return float(total)


def _task(scorer: Scorer, cluster_d: dict, job_d: dict, plan_d: dict, seed: int | None) -> dict:
    cluster, job = cluster_from_dict(cluster_d), job_from_dict(job_d)
    plan = plan_from_dict(plan_d)
    t0 = time.perf_counter()
    out = dict(scorer(cluster, job, plan, seed))
    out.setdefault("wall_s", time.perf_counter() - t0)
    return out


def score_all(scorer: Scorer, cluster: Cluster, job: Job, plans: list[Plan], seed: int | None, jobs: int,
              desc: str) -> list[dict]:
    """Score plans in `jobs` processes (inline when jobs <= 1); results in input order."""
    cd, jd = cluster.model_dump(mode="json"), job.model_dump(mode="json")
    pds = [p.to_json_dict() for p in plans]
    results: list[dict | None] = [None] * len(plans)
    with progress_bar(len(plans), desc, unit="plan") as bar:
        if jobs <= 1 or len(plans) <= 1:
            for i, pd in enumerate(pds):
                results[i] = _task(scorer, cd, jd, pd, seed)
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=min(jobs, len(plans))) as pool:
                futs = {pool.submit(_task, scorer, cd, jd, pd, seed): i for i, pd in enumerate(pds)}
                for fut in as_completed(futs):
                    results[futs[fut]] = fut.result()
                    bar.update(1)
    return results  # type: ignore[return-value]


@dataclass
class Ranked:
    candidate: Candidate
    index: int
    proxy_s: float | None = None
    full_s: float | None = None

    @property
    def best_s(self) -> float:
        """The best prediction this candidate has: full, else proxy, else the estimate."""
        for v in (self.full_s, self.proxy_s):
            if v is not None:
                return v
        return self.candidate.estimate_s


@dataclass
class SearchResult:
    best: Ranked
    baseline: Ranked
    ranked: list[Ranked]  # every candidate, best first (full, then proxy, then estimate)
    plan: Plan  # the best plan with its meta filled in
    wall_s: float
    counts: dict[str, int] = field(default_factory=dict)


def search(cluster: Cluster, job: Job, cons: Constraints, scorer: Scorer = simulate_summary,
           seed: int | None = None, jobs: int = 2, proxy_epochs: int = 2, proxy_count: int = 12,
           full_count: int = 3, objective: str = "time") -> SearchResult:
    t0 = time.perf_counter()
    cands = generate(cluster, job, cons)
    ranked = [Ranked(c, i) for i, c in enumerate(cands)]
    base = ranked[0]  # generate() puts uniform first
    allowed = [r for r in ranked if r.candidate.strategy in cons.strategies]
    if not allowed:
        raise UserError("no candidate plan satisfies the constraints (--strategy, --sync, --min-bsp-fraction); "
                        "relax one of them")

    by_est = sorted(allowed, key=lambda r: (r.candidate.estimate_s, r.index))
    pick = {r.index for r in by_est[:proxy_count]} | {base.index}
    seen: set[str] = set()
    for r in by_est:  # the best-estimated candidate of every strategy gets simulated too
        if r.candidate.strategy not in seen:
            seen.add(r.candidate.strategy)
            pick.add(r.index)
    proxied = [ranked[i] for i in sorted(pick)]
    shorts = [shorten(r.candidate.plan, proxy_epochs) for r in proxied]
    summaries = score_all(scorer, cluster, job, shorts, seed, jobs, "proxy")
    for r, short, s in zip(proxied, shorts, summaries):
        r.proxy_s = scale_up(r.candidate.plan, short, s)

    pool = [r for r in proxied if r.candidate.strategy in cons.strategies]
    by_proxy = sorted(pool, key=lambda r: (r.proxy_s, r.index))
    full_pick = sorted({r.index for r in by_proxy[:full_count]} | {base.index})
    fulls = [ranked[i] for i in full_pick]
    if full_count > 0:
        summaries = score_all(scorer, cluster, job, [r.candidate.plan for r in fulls], seed, jobs, "full")
        for r, s in zip(fulls, summaries):
            r.full_s = float(s["makespan_s"])

    def key(r: Ranked) -> tuple:
        level = 0 if r.full_s is not None else 1 if r.proxy_s is not None else 2
        return (level, r.best_s, r.index)

    ordered = sorted(ranked, key=key)
    eligible = [r for r in ordered if r.candidate.strategy in cons.strategies]
    best = eligible[0] if eligible else base
    how = (f"full simulation (seed {seed})" if best.full_s is not None
           else f"shortened-horizon simulation: phases cut to {proxy_epochs} epoch(s), durations scaled back")
    meta = dict(best.candidate.plan.meta)
    meta.update({
        "strategy": best.candidate.strategy,
        "parameters": best.candidate.params,
        "objective": objective,
        "predicted_makespan_s": best.best_s,
        "prediction": how,
        "estimate_s": best.candidate.estimate_s,
        "proxy_makespan_s": best.proxy_s,
        "uniform_makespan_s": base.best_s,
        "ratio_to_uniform": best.best_s / base.best_s,
        "bsp_fraction": best.candidate.bsp_fraction,
        "seed": seed,
        "candidates": len(cands),
    })
    plan = best.candidate.plan.model_copy(update={"meta": meta})
    counts = {"candidates": len(cands), "proxy": len(proxied), "full": len(fulls) if full_count > 0 else 0}
    return SearchResult(best, base, ordered, plan, time.perf_counter() - t0, counts)


def table(result: SearchResult, top: int) -> str:
    """The ranked top-K as text."""
    base = result.baseline.best_s
    rows = [f"{'rank':>4}  {'candidate':<58} {'estimate_s':>11} {'proxy_s':>11} {'full_s':>11} {'vs uniform':>10}"]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    shown = [r for r in result.ranked if r.proxy_s is not None][:top]
    if result.baseline not in shown:
        shown.append(result.baseline)
    for k, r in enumerate(shown, 1):
        rank = str(result.ranked.index(r) + 1)
        rows.append(f"{rank:>4}  {r.candidate.label:<58.58} {r.candidate.estimate_s:>11.1f} {f(r.proxy_s):>11} "
                    f"{f(r.full_s):>11} {r.best_s / base:>9.3f}x")
    return "\n".join(rows)


def summary_json(result: SearchResult, top: int) -> dict[str, Any]:
    return {
        "best": {"strategy": result.best.candidate.strategy, "parameters": result.best.candidate.params,
                 "predicted_makespan_s": result.best.best_s},
        "uniform_makespan_s": result.baseline.best_s,
        "ratio_to_uniform": result.best.best_s / result.baseline.best_s,
        "ranked": [{"label": r.candidate.label, "strategy": r.candidate.strategy, "parameters": r.candidate.params,
                    "estimate_s": r.candidate.estimate_s, "proxy_s": r.proxy_s, "full_s": r.full_s}
                   for r in result.ranked[:top]],
        "counts": result.counts,
        "wall_s": result.wall_s,
    }
