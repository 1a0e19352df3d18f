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
depend on completion order. One pool serves the whole search (`Scoring`): each distinct
plan is simulated once, and the uniform baseline's full run (which every default search
needs) starts before the candidates are generated, so it overlaps generation and the
proxies.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
import multiprocessing
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from hybridps.errors import UserError, raise_if_interrupted
from hybridps.spec import Cluster, Job, Plan, cluster_from_dict, job_from_dict, plan_from_dict
from hybridps.progress import progress_bar
from solver.candidates import Candidate, Constraints, generate, phase_overheads_s, uniform_plan

BASELINE_MARGIN = 0.8  # skip the baseline's full run when the best proxy is this far below it

Scorer = Callable[[Cluster, Job, Plan, int | None], dict]


def simulate_summary(cluster: Cluster, job: Job, plan: Plan, seed: int | None, target_accuracy: float | None = None,
                     target_loss: float | None = None) -> dict:
    """The default scorer: the discrete-event simulator; with the job's [convergence]
    model also "quality": final accuracy/loss, time to the target, and the progress each
    phase made and what a policy's switches inside it kept (what the proxy stage scales up)."""
    from sim.convergence import phase_gains, predict_sim, quality, update_progress, Stream
    from sim.engine import Simulation

    spec = job.convergence
    res = Simulation(cluster, job, plan, seed=seed, log_updates=spec is not None).run(progress=_epoch_done)
    out = res.summary()
    if spec is not None:
        pred = predict_sim(res, plan, spec)
        q = quality(pred, spec, target_accuracy, target_loss)
        stream = Stream.from_update_log(res.counters.update_log, res.worker_names)
        gain, kept = phase_gains(stream, plan, spec, update_progress(stream, plan, spec))
        q["phase_progress"] = [float(v) for v in gain]
        q["phase_kept"] = [float(v) for v in kept]  # what a policy's switches inside each phase keep
        out["quality"] = q
    return out


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


def _phase_time_model(short: Plan, summary: dict) -> dict[str, tuple[float, float, float, int]] | None:
    """Per proxy phase configuration: (alpha, beta, duration, epochs) of `scale_up`."""
    phases = summary.get("phases")
    if not phases or len(phases) != len(short.phases):
        return None
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
    return model


def _full_phase_s(model: dict, full) -> float:
    alpha, beta, duration, epochs = model[_phase_key(full)]
    est = alpha + full.epochs * beta
    if full.epochs >= epochs:
        est = max(est, duration)  # never shorter than what the proxy measured
    return max(est, 0.0)


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
    model = _phase_time_model(short, summary)
    if model is None:
        ratio = sum(p.epochs for p in plan.phases) / sum(p.epochs for p in short.phases)
        return float(summary["makespan_s"]) * ratio
    return float(sum(_full_phase_s(model, full) for full in plan.phases))


def _lr_ratio(full, cut, spec) -> float:
    """Progress per step of a full phase relative to its proxy phase when only the LR
    differs: δ(x_full, B̄)/δ(x_cut, B̄), B̄ the phase's samples per update."""
    from sim.convergence import step_progress

    if full.lr == cut.lr:
        return 1.0
    bbar = sum(w.batch for w in full.workers) / len(full.workers)
    if full.sync == "bsp" and full.exchange == "gradient":
        bbar *= len(full.workers)
    d_cut = float(step_progress(cut.lr / spec.lr_max, bbar, spec.noise_scale))
    d_full = float(step_progress(full.lr / spec.lr_max, bbar, spec.noise_scale))
    return d_full / d_cut if d_cut > 0 else 1.0


def proxy_quality(cluster: Cluster, job: Job, plan: Plan, short: Plan, summary: dict,
                  target_accuracy: float | None = None, target_loss: float | None = None) -> dict | None:
    """Quality of the full plan from its proxy, scaled like the time: every full phase
    makes its proxy phase's progress per epoch (scaled by `_lr_ratio` when its LR differs)
    times its epochs, over the duration `scale_up` gives it; progress is linear inside a
    phase, so the time to the target is interpolated there (docs/solver.md). A phase whose
    policy switched to stale gradients in the proxy repeats the proxy phase's pattern
    instead (`_repeat`)."""
    from sim.convergence import accuracy_at, kept_at_phase_start, loss_at, progress_for_accuracy, progress_for_loss

    spec = job.convergence
    q = summary.get("quality")
    model = _phase_time_model(short, summary)
    if spec is None or q is None or model is None or "phase_progress" not in q:
        return None
    rate, cuts, kept = {}, {}, {}
    for cut, prog, k in zip(short.phases, q["phase_progress"], q.get("phase_kept", [1.0] * len(short.phases))):
        rate[_phase_key(cut)] = prog / cut.epochs
        cuts[_phase_key(cut)] = cut
        kept[_phase_key(cut)] = k
    want = (progress_for_accuracy(target_accuracy, spec) if target_accuracy is not None
            else progress_for_loss(target_loss, spec) if target_loss is not None else None)
    t, P, hit = 0.0, 0.0, None
    for k, full in enumerate(plan.phases):
        if k:
            t += cluster.ps.phase_overhead_s
        P *= kept_at_phase_start(plan, k, spec)
        key = _phase_key(full)
        dur = _full_phase_s(model, full)
        gain = rate[key] * full.epochs * _lr_ratio(full, cuts[key], spec)
        new = max(_repeat(P, gain, kept[key], full.epochs / cuts[key].epochs), 0.0)
        if want is not None and hit is None and new >= want:
            hit = t + (dur * (want - P) / (new - P) if new > P else 0.0)
        t += dur
        P = new
    if want is not None and want <= 0:
        hit = 0.0
    return {"final_accuracy": float(accuracy_at(P, spec)), "final_loss": float(loss_at(P, spec)),
            "time_to_target_s": hit}


def _repeat(P: float, gain: float, kept: float, repeats: float) -> float:
    """Progress at the end of a full phase entered with P: `gain` is its progress without
    switches (the proxy's rate times its epochs). With a policy's switches the phase is
    `repeats` copies of the proxy phase, each mapping P to kept·P + gain/repeats: the
    geometric sum."""
    if kept == 1.0:
        return P + gain
    k = kept ** repeats
    return k * P + gain / repeats * (1.0 - k) / (1.0 - kept)


_epoch_sink: Callable[[], None] | None = None  # set while a plan is scored: counts its simulated epochs
_pool_counter = None  # in a pool process: the parent's shared epoch counter (set by _pool_init)


def _epoch_done(_epochs_so_far: int) -> None:
    """The simulator's per-epoch callback: tell the scoring progress bar."""
    if _epoch_sink is not None:
        _epoch_sink()


def _counting(counter, then: Callable[[], None] | None = None) -> Callable[[], None]:
    """An epoch sink that adds 1 to the shared `counter`, then calls `then` (inline:
    redraw the bar)."""

    def add() -> None:
        with counter.get_lock():
            counter.value += 1
        if then is not None:
            then()

    return add


def _plan_epochs(pd: dict) -> int:
    return sum(ph["epochs"] for ph in pd["phases"])


def _plan_key(pd: dict) -> str:
    """What a scorer sees of a plan: its phases (the meta is not simulated)."""
    return repr(pd["phases"])


def _task(scorer: Scorer, cluster_d: dict, job_d: dict, plan_d: dict, seed: int | None) -> dict:
    cluster, job = cluster_from_dict(cluster_d), job_from_dict(job_d)
    plan = plan_from_dict(plan_d)
    t0 = time.perf_counter()
    out = dict(scorer(cluster, job, plan, seed))
    out.setdefault("wall_s", time.perf_counter() - t0)
    return out


def _pool_task(live: bool, *args) -> dict:
    """`_task` in a pool process; `live`: its simulated epochs move the parent's bar as they
    happen (a plan started before its stage counts when it finishes)."""
    global _epoch_sink
    _epoch_sink = _counting(_pool_counter) if live else None
    return _task(*args)


class Scoring:
    """Scores plans for one search, in `jobs` processes (inline when jobs <= 1); results
    come in input order whatever the completion order. Each distinct plan (its phases) is
    scored once: repeated in one call (e.g. sync-switch proxies that differ only beyond
    the proxy horizon), asked for again in a later call, or submitted early with `start`
    (the uniform baseline's full run, while the candidates are generated), it shares the
    first result. `reuse=False` forgets the results between calls (the old path, which
    the bench times). Use as a context manager: leaving it on an error or Ctrl-C stops the
    pool's processes, running tasks included."""

    def __init__(self, scorer: Scorer, cluster: Cluster, job: Job, seed: int | None, jobs: int,
                 reuse: bool = True):
        self.scorer, self.seed, self.jobs, self.reuse = scorer, seed, jobs, reuse
        self.cd, self.jd = cluster.model_dump(mode="json"), job.model_dump(mode="json")
        self.counter = multiprocessing.Value("q", 0)  # epochs simulated so far, by every process
        self.pool: ProcessPoolExecutor | None = None
        self.results: dict[str, dict] = {}
        self.running: dict[str, Future] = {}

    def __enter__(self) -> "Scoring":
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        if self.pool is None:
            return
        if exc_type is None and not self.running:
            self.pool.shutdown()
        else:  # Ctrl-C, SIGTERM, a failed task, or work nobody waits for: leave no process behind
            _terminate(self.pool)

    def start(self, plans: list[Plan]) -> None:
        """Submit `plans` now, for a later `score` to collect (inline: nothing to do)."""
        if self.jobs > 1:
            for key, pd in _keyed(plans):
                self._submit(key, pd, live=False)

    def score(self, plans: list[Plan], desc: str) -> list[dict]:
        """Every plan's summary; the progress bar counts simulated epochs, so a long full
        simulation moves it as it goes."""
        if not self.reuse:
            self.results = {}
        keyed = _keyed(plans)
        todo: dict[str, dict] = {}
        for key, pd in keyed:
            if key not in self.results:
                todo.setdefault(key, pd)
        with progress_bar(sum(map(_plan_epochs, todo.values())), desc, unit="epoch") as bar:
            if self.jobs <= 1 or (len(todo) <= 1 and not todo.keys() & self.running.keys()):
                self._inline(todo, bar)
            else:
                self._in_pool(todo, bar)
        return [dict(self.results[key]) for key, _ in keyed]

    def _submit(self, key: str, pd: dict, live: bool) -> None:
        if key in self.results or key in self.running:
            return
        if self.pool is None:
            self.pool = ProcessPoolExecutor(max_workers=self.jobs, initializer=_pool_init, initargs=(self.counter,))
        self.running[key] = self.pool.submit(_pool_task, live, self.scorer, self.cd, self.jd, pd, self.seed)

    def _inline(self, todo: dict[str, dict], bar) -> None:
        global _epoch_sink
        base, finished = self.counter.value, 0  # finished: a scorer that reports no epochs moves the bar too

        def show() -> None:
            bar.update(max(self.counter.value - base, finished) - bar.n)

        _epoch_sink = _counting(self.counter, show)
        try:
            for key, pd in todo.items():
                raise_if_interrupted()
                self.results[key] = _task(self.scorer, self.cd, self.jd, pd, self.seed)
                finished += _plan_epochs(pd)
                show()
        finally:
            _epoch_sink = None

    def _in_pool(self, todo: dict[str, dict], bar) -> None:
        base, finished = self.counter.value, 0
        for key, pd in todo.items():
            self._submit(key, pd, live=True)
        waiting = {self.running[key]: key for key in todo}
        pending = set(waiting)
        while pending:
            raise_if_interrupted()  # one that a fork callback swallowed while the pool grew
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            for fut in done:
                key = waiting[fut]
                self.results[key] = fut.result()
                del self.running[key]
                finished += _plan_epochs(todo[key])
            bar.update(max(self.counter.value - base, finished) - bar.n)


def _keyed(plans: list[Plan]) -> list[tuple[str, dict]]:
    """Each plan's `_plan_key` and JSON dict."""
    pds = [p.to_json_dict() for p in plans]
    return [(_plan_key(pd), pd) for pd in pds]


def score_all(scorer: Scorer, cluster: Cluster, job: Job, plans: list[Plan], seed: int | None, jobs: int,
              desc: str) -> list[dict]:
    """Score plans in `jobs` processes (inline when jobs <= 1); results in input order,
    identical plans scored once (`Scoring`)."""
    with Scoring(scorer, cluster, job, seed, jobs) as scoring:
        return scoring.score(plans, desc)


def _pool_init(counter) -> None:
    """In a pool process: the parent decides about Ctrl-C (sent to the whole terminal
    group); SIGTERM, which the parent sends to stop it, just ends it (no traceback);
    simulated epochs count into the parent's `counter`."""
    global _pool_counter
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _pool_counter = counter


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop the pool's processes now, running tasks included (shutdown alone waits for
    them). Python < 3.14 has no public call for it (3.14: terminate_workers)."""
    processes = list((pool._processes or {}).values())
    for p in processes:
        p.terminate()
    pool.shutdown(wait=True, cancel_futures=True)
    for p in processes:
        p.join()


@dataclass(eq=False)  # compared by identity: a policy candidate points to its parent
class Ranked:
    candidate: Candidate
    index: int
    proxy_s: float | None = None
    full_s: float | None = None
    proxy_q: dict | None = None  # predicted quality from the proxy (sim.convergence), when modelled
    full_q: dict | None = None  # ... from the full simulation's exact update stream
    risks: list[str] = field(default_factory=list)  # known quality risks (sim.convergence.risks)
    parent: "Ranked | None" = None  # a policy candidate's static parent (solver.policies)
    proxy_actions: dict | None = None  # the policy's decisions by kind, in the proxy run
    full_actions: dict | None = None  # ... in the full run

    @property
    def policy_actions(self) -> dict | None:
        """The policy's decisions in the run best_s rests on (None: not simulated)."""
        return self.full_actions if self.full_s is not None else self.proxy_actions

    @property
    def how(self) -> str:
        """How best_s was obtained: full sim, proxy (shortened, scaled back) or estimate (closed form)."""
        return "full" if self.full_s is not None else "proxy" if self.proxy_s is not None else "estimate"

    @property
    def quality(self) -> dict | None:
        return self.full_q if self.full_s is not None else self.proxy_q

    @property
    def reaches(self) -> bool | None:
        """Predicted to reach the target (None: quality not predicted)."""
        q = self.quality
        return None if q is None else q.get("time_to_target_s") is not None

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


def _target_key(r: Ranked) -> tuple:
    """Time-to-target ranking: predicted to reach first (fastest first), then predicted to
    miss, then not predicted; full before proxy before estimate inside each group."""
    level = 0 if r.full_s is not None else 1 if r.proxy_s is not None else 2
    reach = r.reaches
    group = 0 if reach else 1 if reach is not None else 2
    ttt = r.quality["time_to_target_s"] if reach else r.best_s
    return (group, level, ttt, r.index)


def _confirm_reaching(scoring: Scoring, ranked: list[Ranked], cons: Constraints, limit: int) -> None:
    """The proxy can be too hopeful about quality: while a proxy-only candidate is predicted
    to reach the target sooner than every fully simulated one (or when no full one reaches),
    simulate it in full too (at most `limit` more), so the answer rests on an exact stream."""
    for _ in range(limit):
        order = sorted((r for r in ranked if r.candidate.strategy in cons.strategies), key=_target_key)
        best_full = next((r for r in order if r.full_s is not None and r.reaches), None)
        todo = [r for r in order if r.full_s is None and r.proxy_s is not None and r.reaches
                and (best_full is None or r.quality["time_to_target_s"] < best_full.quality["time_to_target_s"])]
        if not todo:
            return
        _score_full(scoring, _with_parent(todo[:1]))


def _record_full(r: Ranked, summary: dict) -> None:
    r.full_s, r.full_q = float(summary["makespan_s"]), _quality_of(summary)
    r.full_actions = summary.get("policy_actions")


def _score_full(scoring: Scoring, rs: list[Ranked]) -> None:
    for r, s in zip(rs, scoring.score([r.candidate.plan for r in rs], "full")):
        _record_full(r, s)


def _with_parent(rs: list[Ranked]) -> list[Ranked]:
    """`rs` and the static parents of the policy candidates among them that have no full
    run yet: what a policy buys is measured against its parent's full run."""
    extra = [r.parent for r in rs if r.parent is not None and r.parent.full_s is None and r.parent not in rs]
    return rs + list(dict.fromkeys(extra))


def _proxy_stage(scoring: Scoring, cluster: Cluster, job: Job, ranked: list[Ranked], cons: Constraints,
                 proxy_epochs: int, proxy_count: int, targets: tuple[float | None, float | None]) -> list[Ranked]:
    """Simulate the picked candidates on the shortened horizon; returns them, proxy_s set.
    Policy candidates and their parents are always picked; they take no static one's place."""
    base = ranked[0]
    allowed = [r for r in ranked if r.candidate.strategy in cons.strategies and r.parent is None]
    by_est = sorted(allowed, key=lambda r: (r.candidate.estimate_s, r.index))
    # quality has no closed-form estimate: with a target every candidate gets a proxy run
    targeted = targets != (None, None)
    pick = {r.index for r in (by_est if targeted else by_est[:proxy_count])} | {base.index}
    pick |= {i for r in ranked if r.parent is not None for i in (r.index, r.parent.index)}  # policy candidates
    seen: set[str] = set()
    for r in by_est:  # the best-estimated candidate of every strategy gets simulated too
        if r.candidate.strategy not in seen:
            seen.add(r.candidate.strategy)
            pick.add(r.index)
    proxied = [ranked[i] for i in sorted(pick)]
    shorts = [shorten(r.candidate.plan, proxy_epochs) for r in proxied]
    summaries = scoring.score(shorts, "proxy")
    for r, short, s in zip(proxied, shorts, summaries):
        r.proxy_s = scale_up(r.candidate.plan, short, s) + phase_overheads_s(cluster, r.candidate.plan)
        r.proxy_q = proxy_quality(cluster, job, r.candidate.plan, short, s, *targets)
        r.proxy_actions = s.get("policy_actions")
    return proxied


def _policy_variants(cluster: Cluster, job: Job, ranked: list[Ranked], cons: Constraints) -> list[Ranked]:
    """With transient stragglers (solver.policies): the best POLICY_PARENTS all-bsp
    candidates by estimate, each with every built-in of POLICY_SPECS. Appended to
    `ranked` (the proxy stage then simulates them, and their parents, with the others)
    and returned; none without stragglers."""
    from sim.convergence import risks
    from solver.policies import POLICY_PARENTS, POLICY_SPECS, is_static_bsp, searches_policies, with_policy

    if not searches_policies(cluster, cons):
        return []
    allowed = [r for r in ranked if r.candidate.strategy in cons.strategies and is_static_bsp(r.candidate.plan)]
    parents = sorted(allowed, key=lambda r: (r.candidate.estimate_s, r.index))[:POLICY_PARENTS]
    variants = []
    for parent in parents:
        for spec in POLICY_SPECS:
            cand = with_policy(cluster, job, parent.candidate, spec)
            variants.append(Ranked(cand, len(ranked) + len(variants), risks=risks(cand.plan, job.convergence),
                                   parent=parent))
    ranked.extend(variants)
    return variants


def _full_stage(scoring: Scoring, ranked: list[Ranked], proxied: list[Ranked], cons: Constraints,
                full_count: int, baseline: str, targeted: bool) -> None:
    """Simulate the best `full_count` by proxy and the baseline (unless `baseline="auto"`
    and the proxy shows it clearly beaten) in full; with a target, `_confirm_reaching`."""
    base = ranked[0]
    pool = [r for r in proxied if r.candidate.strategy in cons.strategies]
    by_proxy = sorted(pool, key=_target_key if targeted else (lambda r: (r.proxy_s, r.index)))
    full_pick = {r.index for r in _with_parent(by_proxy[:full_count])}
    best_proxy = by_proxy[0].proxy_s if by_proxy else base.proxy_s
    # The baseline is the costliest plan to simulate (small batches, many rounds). When the
    # proxy says it is clearly beaten, its full run is skipped and its proxy figure reported.
    skip_base = baseline == "auto" and best_proxy <= BASELINE_MARGIN * base.proxy_s
    if not skip_base:
        full_pick.add(base.index)
    fulls = [ranked[i] for i in sorted(full_pick)]
    if full_count > 0 and fulls:
        _score_full(scoring, fulls)
        best_full = min(r.full_s for r in fulls)
        if skip_base and best_full > BASELINE_MARGIN * base.proxy_s:  # the proxy was too hopeful
            _record_full(base, scoring.score([base.candidate.plan], "full")[0])
    if targeted and full_count > 0:
        _confirm_reaching(scoring, ranked, cons, limit=2 * full_count)


def search(cluster: Cluster, job: Job, cons: Constraints, scorer: Scorer = simulate_summary,
           seed: int | None = None, jobs: int = 2, proxy_epochs: int = 2, proxy_count: int = 12,
           full_count: int = 2, objective: str = "time", baseline: str = "full",
           target_accuracy: float | None = None, target_loss: float | None = None,
           reuse: bool = True) -> SearchResult:
    """Rank the candidates; with a target (needs job.convergence) the objective is the
    predicted time to it, and a plan predicted to miss never beats one predicted to reach.

    reuse=False is the old path, kept for the bench's same-run baseline: the baseline's
    full run waits for the full stage, the MILPs are not shared, and each stage scores
    its own plans. Both paths give the same result."""
    from functools import partial

    from sim.convergence import risks

    targeted = target_accuracy is not None or target_loss is not None
    if targeted and job.convergence is None:
        raise UserError("a target accuracy/loss needs the job's [convergence] model (hybridps calibrate --job)")
    if targeted:
        objective = "time_to_accuracy" if target_accuracy is not None else "time_to_loss"
    if scorer is simulate_summary and targeted:
        scorer = partial(simulate_summary, target_accuracy=target_accuracy, target_loss=target_loss)
    t0 = time.perf_counter()
    with Scoring(scorer, cluster, job, seed, jobs, reuse) as scoring:
        if reuse and baseline == "full" and full_count > 0:  # always simulated in full: start it now
            scoring.start([uniform_plan(cluster, job)[0]])
        # DBSL variants outside the best proxy_count estimates are never simulated: not generated
        # pruning DBSL variants is exact only while proxies are picked by time estimate
        cands = generate(cluster, job, cons, dbsl_keep=None if targeted else proxy_count, share_milps=reuse)
        t_gen = time.perf_counter()
        ranked = [Ranked(c, i, risks=risks(c.plan, job.convergence)) for i, c in enumerate(cands)]
        base = ranked[0]  # generate() puts uniform first
        if not any(r.candidate.strategy in cons.strategies for r in ranked):
            raise UserError("no candidate plan satisfies the constraints (--strategy, --sync, --min-bsp-fraction); "
                            "relax one of them")
        variants = _policy_variants(cluster, job, ranked, cons)
        proxied = _proxy_stage(scoring, cluster, job, ranked, cons, proxy_epochs, proxy_count,
                               (target_accuracy, target_loss))
        t_proxy = time.perf_counter()
        _full_stage(scoring, ranked, proxied, cons, full_count, baseline, targeted)
    t_full = time.perf_counter()
    ordered = sorted(ranked, key=_target_key if targeted else _time_key)
    eligible = [r for r in ordered if r.candidate.strategy in cons.strategies
                and {ph.sync for ph in r.candidate.plan.phases} <= set(cons.sync_modes)]  # the bsp baseline too
    best = eligible[0] if eligible else base
    plan = best.candidate.plan.model_copy(update={"meta": _best_meta(
        best, base, objective, seed, proxy_epochs, len(ranked), (target_accuracy, target_loss))})
    counts = {"candidates": len(ranked), "proxy": len(proxied),
              "full": sum(r.full_s is not None for r in ranked)}
    if variants:
        counts["policy"] = len(variants)  # candidates with an online policy (among `candidates`)
    stages = {"generate_s": t_gen - t0, "proxy_s": t_proxy - t_gen, "full_s": t_full - t_proxy}
    return SearchResult(best, base, ordered, plan, time.perf_counter() - t0, counts, stages)


def _time_key(r: Ranked) -> tuple:
    """Time ranking: full before proxy before estimate, fastest first inside each."""
    level = 0 if r.full_s is not None else 1 if r.proxy_s is not None else 2
    return (level, r.best_s, r.index)


def _best_meta(best: Ranked, base: Ranked, objective: str, seed: int | None, proxy_epochs: int, candidates: int,
               targets: tuple[float | None, float | None]) -> dict:
    """plan.meta of the answer: what it is, its prediction and how it was obtained."""
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
        "candidates": candidates,
    })
    q = best.quality
    if q is not None:
        meta["predicted_final_accuracy"] = q["final_accuracy"]
        meta["predicted_final_loss"] = q["final_loss"]
    target_accuracy, target_loss = targets
    if target_accuracy is not None or target_loss is not None:
        meta["target_accuracy" if target_accuracy is not None else "target_loss"] = (
            target_accuracy if target_accuracy is not None else target_loss)
        meta["predicted_time_to_target_s"] = None if q is None else q["time_to_target_s"]
    if best.risks:
        meta["risks"] = best.risks
    return meta


def _quality_of(summary: dict) -> dict | None:
    q = summary.get("quality")
    if q is None:
        return None
    return {k: q.get(k) for k in ("final_accuracy", "final_loss", "time_to_target_s")}


def table(result: SearchResult, top: int) -> str:
    """The ranked top-K as text: predicted time and how it was obtained (full simulation,
    proxy = shortened-horizon simulation scaled back, estimate = closed form), predicted
    final accuracy and time to the target when quality is modelled, the full label, the
    baseline marked, and each known quality risk on a line of its own."""
    base = result.baseline.best_s

    def f(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    rows = [f"{'rank':>4}  {'time_s':>10} {'how':<8} {'final_acc':>9} {'to_target_s':>11} {'vs uniform':>10}  candidate"]
    shown = [r for r in result.ranked if r.proxy_s is not None][:top]
    if result.baseline not in shown:
        shown.append(result.baseline)
    for r in shown:
        rank = str(result.ranked.index(r) + 1)
        q = r.quality or {}
        ttt = q.get("time_to_target_s")
        ttt_s = f(ttt, ".1f") if q else "-"
        if q and ttt is None and result.plan.meta.get("objective", "time") != "time":
            ttt_s = "misses"
        mark = "  [baseline]" if r is result.baseline else ""
        rows.append(f"{rank:>4}  {r.best_s:>10.1f} {r.how:<8} {f(q.get('final_accuracy'), '.3f'):>9} {ttt_s:>11} "
                    f"{r.best_s / base:>9.3f}x  {r.candidate.label}{mark}")
        for risk in r.risks:
            rows.append(f"{'':>4}  {'':>10} {'':<8} {'':>9} {'':>11} {'':>10}  risk: {risk}")
        if r.parent is not None:
            line = _gain_line(policy_gain(r), result.ranked.index(r.parent) + 1)
            rows.append(f"{'':>4}  {'':>10} {'':<8} {'':>9} {'':>11} {'':>10}  policy: {line}")
    return "\n".join(rows)


def policy_gain(r: Ranked) -> dict[str, Any]:
    """What a policy candidate buys against its static parent, on the same footing (their
    full runs when both have one, else their proxies): `gain_s` = the parent's time minus
    its own (> 0: faster); with quality modelled, `final_accuracy_change` (its own minus
    the parent's) and `gain_to_target_s` (the parent's time to the target minus its own;
    null when either misses or there is no target); and the policy's decisions."""
    p = r.parent
    full = r.full_s is not None and p.full_s is not None
    mine, theirs = (r.full_s, p.full_s) if full else (r.proxy_s, p.proxy_s)
    q, pq = (r.full_q, p.full_q) if full else (r.proxy_q, p.proxy_q)
    out = {"policy": r.candidate.plan.meta["policy"], "parent": p.candidate.label,
           "policy_actions": r.policy_actions or {}, "gain_s": theirs - mine, "gain_basis": "full" if full else "proxy"}
    if q is not None and pq is not None:
        out["final_accuracy_change"] = q["final_accuracy"] - pq["final_accuracy"]
        t, pt = q["time_to_target_s"], pq["time_to_target_s"]
        out["gain_to_target_s"] = None if t is None or pt is None else pt - t
    return out


def _gain_line(g: dict[str, Any], parent_rank: int) -> str:
    """The table's line under a policy candidate: what it buys against its parent."""
    faster = f"{abs(g['gain_s']):.1f} s {'faster' if g['gain_s'] >= 0 else 'slower'}"
    line = f"{faster} than rank {parent_rank} ({g['gain_basis']})"
    if "final_accuracy_change" in g:
        line += f", final accuracy {g['final_accuracy_change']:+.3f}"
        if g["gain_to_target_s"] is not None:
            gt = g["gain_to_target_s"]
            line += f", to target {abs(gt):.1f} s {'sooner' if gt >= 0 else 'later'}"
    actions = g["policy_actions"]
    n = sum(actions.values())
    return line + f"; {n} decision(s)" + (f" ({', '.join(f'{k} {v}' for k, v in actions.items())})" if n else "")


def _row(r: Ranked, result: SearchResult) -> dict[str, Any]:
    """One candidate of the JSON ranking; a policy candidate adds `policy_gain`'s fields."""
    row = {"label": r.candidate.label, "strategy": r.candidate.strategy, "parameters": r.candidate.params,
           "estimate_s": r.candidate.estimate_s, "proxy_s": r.proxy_s, "full_s": r.full_s, "how": r.how,
           "quality": r.quality, "risks": r.risks, "baseline": r is result.baseline}
    if r.parent is not None:
        row.update(policy_gain(r))
    return row


def summary_json(result: SearchResult, top: int | None) -> dict[str, Any]:
    """The ranking as JSON (`plan --json`, and `plan --keep DIR`'s ranking.json)."""
    picked = result.ranked if top is None else result.ranked[:top]
    return {
        "best": {"strategy": result.best.candidate.strategy, "parameters": result.best.candidate.params,
                 "predicted_makespan_s": result.best.best_s, "quality": result.best.quality},
        "objective": result.plan.meta.get("objective", "time"),
        "uniform_makespan_s": result.baseline.best_s,
        "ratio_to_uniform": result.best.best_s / result.baseline.best_s,
        "ranked": [_row(r, result) for r in picked],
        "counts": result.counts,
        "stage_s": result.stage_s,
        "wall_s": result.wall_s,
    }
