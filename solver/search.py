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
   full; the fastest of those is the answer. The baseline is the costliest plan to
   simulate; with `baseline="auto"` (not the default) its full run is skipped when the
   best proxy is below 0.8x the baseline's proxy *and* the best full result confirms it
   (else it is run after all). Either way the answer is never slower (predicted) than
   the baseline.

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
from solver.candidates import Candidate, Constraints, generate, phase_overheads_s

BASELINE_MARGIN = 0.8  # skip the baseline's full run when the best proxy is this far below it

Scorer = Callable[[Cluster, Job, Plan, int | None], dict]


def simulate_summary(cluster: Cluster, job: Job, plan: Plan, seed: int | None) -> dict:
    """The default scorer: the discrete-event simulator."""
    from sim import simulate

    return simulate(cluster, job, plan, seed=seed).summary()


def _phase_key(p) -> str:
    """What decides a phase's speed: everything but its length and learning rate."""
    d = p.model_dump(mode="json")
    d.pop("epochs")
    d.pop("lr")
    return repr(sorted(d.items()))


def shorten(plan: Plan, proxy_epochs: int) -> Plan:
    """The proxy plan: one phase per distinct phase configuration (phases that differ only
    in length and LR run at the same speed, e.g. the three 160 px phases of a cyclic
    ImageNet plan), each cut to at most `proxy_epochs` epochs."""
    seen: dict[str, int] = {}
    phases = []
    for p in plan.phases:
        k = _phase_key(p)
        if k not in seen:
            seen[k] = len(phases)
            phases.append(p.model_copy(update={"epochs": min(p.epochs, proxy_epochs)}))
        else:
            i = seen[k]
            phases[i] = phases[i].model_copy(update={"epochs": min(max(phases[i].epochs, p.epochs), proxy_epochs)})
    return plan.model_copy(update={"phases": phases})


def scale_up(plan: Plan, short: Plan, summary: dict) -> float:
    """The proxy's simulated time scaled back to the full plan, phase by phase.

    A phase of E epochs takes about `α + E·β`: β the time per epoch of samples in steady
    state, α a fixed cost (under asp with mini-epochs the phase drains: workers that finish
    a round before the target is reached start another, so a phase overshoots by up to one
    round). For every proxy phase, β is the mean spacing of the `epoch_end_s` crossings
    that fall inside it (needs at least two, hence the default of 2 epochs per phase) and α
    the rest of its duration; each full phase then costs α + E·β of its configuration.
    Without two crossings (or without `epoch_end_s`) the duration is scaled linearly.
    Phase durations exclude the time between phases: the caller adds it for the full plan.
    """
    phases = summary.get("phases")
    if not phases or len(phases) != len(short.phases):
        ratio = sum(p.epochs for p in plan.phases) / sum(p.epochs for p in short.phases)
        return float(summary["makespan_s"]) * ratio
    crossings = sorted(summary.get("epoch_end_s") or [])
    model: dict[str, tuple[float, float, float, int]] = {}  # key -> (alpha, beta, duration, epochs)
    for ph, cut in zip(phases, short.phases):
        start, end = float(ph["start_s"]), float(ph["end_s"])
        duration = end - start
        inside = [c for c in crossings if start < c <= end]
        if len(inside) >= 2:
            beta = (inside[-1] - inside[0]) / (len(inside) - 1)
            model[_phase_key(cut)] = (duration - cut.epochs * beta, beta, duration, cut.epochs)
        else:
            model[_phase_key(cut)] = (0.0, duration / cut.epochs, duration, cut.epochs)
    total = 0.0
    for full in plan.phases:
        alpha, beta, duration, epochs = model[_phase_key(full)]
        est = alpha + full.epochs * beta
        if full.epochs >= epochs:
            est = max(est, duration)  # never shorter than what the proxy measured
        total += max(est, 0.0)
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
    """Score plans in `jobs` processes (inline when jobs <= 1); results in input order.
    Identical plans (e.g. sync-switch proxies that differ only beyond the proxy horizon)
    are scored once and share the result."""
    cd, jd = cluster.model_dump(mode="json"), job.model_dump(mode="json")
    all_pds = [p.to_json_dict() for p in plans]
    first: dict[str, int] = {}
    slot = [first.setdefault(repr(pd["phases"]), len(first)) for pd in all_pds]
    unique: dict[int, dict] = {}
    for pd, i in zip(all_pds, slot):
        unique.setdefault(i, pd)
    pds = [unique[i] for i in range(len(first))]
    results: list[dict | None] = [None] * len(pds)
    with progress_bar(len(pds), desc, unit="plan") as bar:
        if jobs <= 1 or len(pds) <= 1:
            for i, pd in enumerate(pds):
                results[i] = _task(scorer, cd, jd, pd, seed)
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=min(jobs, len(pds))) as pool:
                futs = {pool.submit(_task, scorer, cd, jd, pd, seed): i for i, pd in enumerate(pds)}
                for fut in as_completed(futs):
                    results[futs[fut]] = fut.result()
                    bar.update(1)
    return [dict(results[i]) for i in slot]  # type: ignore[arg-type]


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
    stage_s: dict[str, float] = field(default_factory=dict)  # wall time of generate / proxy / full


def search(cluster: Cluster, job: Job, cons: Constraints, scorer: Scorer = simulate_summary,
           seed: int | None = None, jobs: int = 2, proxy_epochs: int = 2, proxy_count: int = 12,
           full_count: int = 2, objective: str = "time", baseline: str = "full") -> SearchResult:
    t0 = time.perf_counter()
    # DBSL variants outside the best proxy_count estimates are never simulated: not generated
    cands = generate(cluster, job, cons, dbsl_keep=proxy_count)
    t_gen = time.perf_counter()
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
        r.proxy_s = scale_up(r.candidate.plan, short, s) + phase_overheads_s(cluster, r.candidate.plan)

    t_proxy = time.perf_counter()
    pool = [r for r in proxied if r.candidate.strategy in cons.strategies]
    by_proxy = sorted(pool, key=lambda r: (r.proxy_s, r.index))
    full_pick = {r.index for r in by_proxy[:full_count]}
    best_proxy = by_proxy[0].proxy_s if by_proxy else base.proxy_s
    # The baseline is the costliest plan to simulate (small batches, many rounds). When the
    # proxy says it is clearly beaten, its full run is skipped and its proxy figure reported.
    skip_base = baseline == "auto" and best_proxy <= BASELINE_MARGIN * base.proxy_s
    if not skip_base:
        full_pick.add(base.index)
    fulls = [ranked[i] for i in sorted(full_pick)]
    if full_count > 0 and fulls:
        summaries = score_all(scorer, cluster, job, [r.candidate.plan for r in fulls], seed, jobs, "full")
        for r, s in zip(fulls, summaries):
            r.full_s = float(s["makespan_s"])
        best_full = min(r.full_s for r in fulls)
        if skip_base and best_full > BASELINE_MARGIN * base.proxy_s:  # the proxy was too hopeful
            base.full_s = float(score_all(scorer, cluster, job, [base.candidate.plan], seed, 1, "full")[0]["makespan_s"])
            fulls.append(base)
    t_full = time.perf_counter()

    def key(r: Ranked) -> tuple:
        level = 0 if r.full_s is not None else 1 if r.proxy_s is not None else 2
        return (level, r.best_s, r.index)

    ordered = sorted(ranked, key=key)
    eligible = [r for r in ordered if r.candidate.strategy in cons.strategies
                and {ph.sync for ph in r.candidate.plan.phases} <= set(cons.sync_modes)]  # the bsp baseline too
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
        "uniform_prediction": "full simulation" if base.full_s is not None else
        (f"shortened-horizon simulation (the best candidate's proxy is below {BASELINE_MARGIN:g}x the baseline's, "
         "so the baseline's full run was skipped; --baseline full forces it)"),
        "ratio_to_uniform": best.best_s / base.best_s,
        "bsp_fraction": best.candidate.bsp_fraction,
        "seed": seed,
        "candidates": len(cands),
    })
    plan = best.candidate.plan.model_copy(update={"meta": meta})
    counts = {"candidates": len(cands), "proxy": len(proxied),
              "full": sum(r.full_s is not None for r in ranked)}
    stages = {"generate_s": t_gen - t0, "proxy_s": t_proxy - t_gen, "full_s": t_full - t_proxy}
    return SearchResult(best, base, ordered, plan, time.perf_counter() - t0, counts, stages)


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
        "stage_s": result.stage_s,
        "wall_s": result.wall_s,
    }
