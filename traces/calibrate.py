"""Fit the simulator's cluster model to what traces measured.

- Compute: per (device, resolution), `t = slowdown_w × (a·n + b)` for an iteration of `n`
  samples on worker `w`. Profile records have slowdown 1. Device speed and worker
  slowdown are separated by alternating least squares: fit a, b on times divided by the
  slowdowns, then set each worker's slowdown to the median ratio of its times to the
  fit. The scale is anchored by the profile records of the device, or else by its
  fastest worker (slowdown 1).
- Network: per worker, `t = latency + bytes / bandwidth` over its push and pull records.
- Transient stragglers: runs of iterations slower than `outlier_factor` × the fit.
- Time between phases (`[ps] phase_overhead_s`): the mean gap between a run's phase
  records (the PS evaluates and checkpoints there; no worker computes).
- Jitter: the coefficient of variation of the other (inlier) iterations around the fit,
  `[stragglers] jitter_cv`: under bsp a round waits for its slowest worker, so noise
  that averages out per worker still lengthens every round.

Run traces are calibrated on *effective* durations: the gaps between a worker's records
(Python overhead: building batches, encoding and loading messages) are given to the
compute before (between two computes) or to the message beside them, so the simulator
sees them as compute time or latency. Never imports torch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from hybridps.errors import UserError
from hybridps.spec import (
    MAX_STRAGGLER_RATE_PER_HOUR,
    Cluster,
    DeviceSpec,
    PSSpec,
    ResolutionProfile,
    StragglerSpec,
    WorkerGroup,
    cluster_from_dict,
    gbps_to_bytes_per_s,
)
from traces.jsonl import Trace
from traces.walltime import WallTimeLog

BYTES_PER_S_PER_GBPS = gbps_to_bytes_per_s(1.0)


@dataclass(frozen=True)
class ComputeFit:
    device: str
    resolution: int
    a: float
    b: float
    max_batch: int
    points: int  # iterations/profile points used (outliers excluded)
    sizes: tuple[int, ...]  # distinct sample counts seen
    r2: float  # of the slowdown-normalised times; nan when all points have one size
    worst_residual_s: float
    worst_relative: float
    worst_where: str
    c: float = 0.0  # seconds per sample^2 when the profile is clearly bent (`_bend`), else 0
    shape: str = "linear"  # or "quadratic (BIC -N vs linear)"


@dataclass(frozen=True)
class LinkFit:
    worker: str
    bandwidth_gbps: float
    latency_ms: float
    messages: int
    sizes: tuple[int, ...]
    separable: bool  # False: one message size, so one of the two was kept from the base
    note: str = ""


@dataclass(frozen=True)
class WorkerFit:
    worker: str
    device: str
    slowdown: float
    iterations: int


@dataclass(frozen=True)
class StragglerFit:
    rate_per_hour: float
    slowdown: float
    mean_duration_s: float
    episodes: int
    observed_s: float  # worker-seconds observed


@dataclass(frozen=True)
class SpreadFit:
    """A fitted duration: the median of `n` measured ones and their 10th-90th percentile
    spread, so a report can say how well one number stands for them."""

    median_s: float
    p10_s: float
    p90_s: float
    n: int

    @staticmethod
    def of(values: list[float]) -> "SpreadFit":
        v = np.asarray(values, dtype=float)
        return SpreadFit(float(np.median(v)), float(np.percentile(v, 10)), float(np.percentile(v, 90)), len(v))


@dataclass
class Calibration:
    cluster: Cluster
    compute: list[ComputeFit] = field(default_factory=list)
    workers: list[WorkerFit] = field(default_factory=list)
    links: list[LinkFit] = field(default_factory=list)
    stragglers: StragglerFit | None = None
    ps_apply_s: float | None = None  # fitted server time per update (per shard), None if not measured
    jitter_cv: float | None = None  # fitted per-iteration noise, None without run records
    phase_overhead_s: float | None = None  # fitted time between phases, None without a multi-phase run
    warnings: list[str] = field(default_factory=list)
    exchange_overhead: dict[str, SpreadFit] = field(default_factory=dict)  # per worker, from run traces
    # per (device, resolution): measured/fitted iteration time of the inlier iterations
    residual_spread: dict[tuple[str, int], SpreadFit] = field(default_factory=dict)
    drift: list["DriftFit"] = field(default_factory=list)  # per (trace, worker) with run iterations
    eval_fit: SpreadFit | None = None  # PS evaluation durations, from eval records with start_s


@dataclass
class _Obs:
    """One timed iteration: `n` samples took `t_s` on `worker` ("" for a profile point)."""

    device: str
    resolution: int
    n: int
    t_s: float
    worker: str
    start_s: float
    where: str
    trace: int  # index of the trace it came from


# --------------------------------------------------------------------------- helpers


def _linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares y = slope·x + intercept ≥ 0 on *relative* residuals (timing noise
    grows with the time), both bounded below by 0 (scipy's bounded least squares). One
    distinct x cannot separate the two: all of it goes to the slope."""
    from scipy.optimize import lsq_linear

    w = 1.0 / np.maximum(y, 1e-12)
    if len(np.unique(x)) < 2:
        return float(np.sum(w * w * x * y) / np.sum(w * w * x * x)), 0.0
    scale = max(float(np.max(np.abs(x))), 1e-300)  # conditioning: x in bytes or samples
    sol = lsq_linear(np.column_stack([w * x / scale, w]), w * y, bounds=(0.0, np.inf), method="bvls")
    return float(sol.x[0] / scale), float(sol.x[1])


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot <= 0:
        return float("nan")
    return 1.0 - float(np.sum((y - pred) ** 2)) / ss_tot


def _worker_devices(trace: Trace, base: Cluster | None) -> dict[str, str]:
    data = trace.header.get("cluster")
    if data:
        cluster = cluster_from_dict(data, f"{trace.path} (header cluster)")
        return {w.name: w.device for w in cluster.worker_list}
    if base is not None:
        return {w.name: w.device for w in base.worker_list}
    return {}


def _effective_records(trace: Trace) -> dict[str, list[dict]]:
    """Per worker, its compute/push/pull records sorted by start, each with `eff_s`: its
    duration plus the gap that belongs to it. The gap between two computes goes to the
    first, the gap before a push (building and encoding it) to the push, the gap after
    a pull (loading it) to the pull: the runtime slows only the compute itself, so the
    overhead around an exchange is per-message time, like a latency."""
    per_worker: dict[str, list[dict]] = defaultdict(list)
    for r in trace.records:
        if r["kind"] in ("compute", "push", "pull"):
            per_worker[r["worker"]].append(dict(r, eff_s=r["end_s"] - r["start_s"]))
    for recs in per_worker.values():
        recs.sort(key=lambda r: (r["start_s"], r["end_s"]))
        for cur, nxt in zip(recs, recs[1:]):
            if cur["phase"] != nxt["phase"]:
                continue
            gap = max(0.0, nxt["start_s"] - cur["end_s"])
            if cur["kind"] == "compute" and nxt["kind"] == "compute":
                cur["eff_s"] += gap
            elif cur["kind"] == "compute" and nxt["kind"] == "push":
                nxt["eff_s"] += gap
            elif cur["kind"] == "pull" and nxt["kind"] == "compute":
                cur["eff_s"] += gap
    return per_worker


# --------------------------------------------------------------------------- compute


def _collect(traces: list[Trace], base: Cluster | None, absorb_gaps: bool) -> list[_Obs]:
    obs: list[_Obs] = []
    for ti, trace in enumerate(traces):
        for r in trace.of_kind("profile"):
            n = r.get("samples", r["batch"])
            obs.append(_Obs(r["device"], r["resolution"], n, r["iteration_s"], "", -1.0,
                            f"{trace.path}: profile record device={r['device']} resolution={r['resolution']} "
                            f"batch={r['batch']}", ti))
        computes = trace.of_kind("compute")
        if not computes:
            continue
        devices = _worker_devices(trace, base)
        per_worker = _effective_records(trace) if absorb_gaps else None
        recs = ([r for rs in per_worker.values() for r in rs if r["kind"] == "compute"] if per_worker
                else computes)
        for r in recs:
            dev = devices.get(r["worker"])
            if dev is None:
                raise UserError(f"{trace.path}: compute record of worker {r['worker']!r}, which neither the "
                                f"trace header's cluster nor --base defines; pass --base with that worker")
            t = r["eff_s"] if absorb_gaps else r["end_s"] - r["start_s"]
            obs.append(_Obs(dev, r["resolution"], r.get("samples", r["batch"]), t, r["worker"], r["start_s"],
                            f"{trace.path}: compute record of {r['worker']} phase {r['phase']} step {r['step']} "
                            f"at t={r['start_s']:.3f} s", ti))
    return obs


def _fit_compute(obs: list[_Obs], outlier_factor: float, iterations: int = 100):
    """Returns ({(dev,res): (a,b)}, {worker: slowdown}, inlier mask).

    Per (device, resolution): with profile points only, a and b are their least-squares
    fit. With run records too, the profile keeps the shape (a/b) and the run sets the
    scale: a run's workers use one or two batch sizes each, so its records cannot
    separate a from b, and the device runs as fast as the run's conditions allow (other
    processes, Python overhead), not as fast as alone. With run records only, a, b and
    the slowdowns are fitted together (alternating least squares). A device with run
    records has its fastest worker at slowdown 1. A slowdown is the mean ratio of the
    worker's inlier times to the fit (the mean, because times add up to the makespan);
    iterations beyond `outlier_factor` × the fit are left to the straggler estimate."""
    keys = sorted({(o.device, o.resolution) for o in obs})
    workers = sorted({o.worker for o in obs if o.worker})
    n = np.array([o.n for o in obs], dtype=float)
    t = np.array([o.t_s for o in obs], dtype=float)
    group = np.array([keys.index((o.device, o.resolution)) for o in obs])
    widx = np.array([workers.index(o.worker) if o.worker else -1 for o in obs])
    w_device = {w: next(o.device for o in obs if o.worker == w) for w in workers}
    shape = {}  # group -> (a, b) of its profile points
    for g in range(len(keys)):
        m = (group == g) & (widx < 0)
        if m.any():
            shape[g] = _linear_fit(n[m], t[m])
    slow = np.ones(len(workers) + 1)  # the last entry (index -1) is the profile's slowdown 1
    inlier = np.ones(len(obs), dtype=bool)
    ab = np.zeros((len(keys), 2))
    for _ in range(iterations):
        s_obs = slow[widx]
        for g in range(len(keys)):
            run = (group == g) & (widx >= 0) & inlier
            if g in shape:
                a0, b0 = shape[g]
                scale = float(np.mean(t[run] / (s_obs[run] * (a0 * n[run] + b0)))) if run.any() else 1.0
                ab[g] = (a0 * scale, b0 * scale)
            else:
                m = run if run.any() else (group == g)
                ab[g] = _linear_fit(n[m], t[m] / s_obs[m])
        pred1 = ab[group, 0] * n + ab[group, 1]
        new = slow.copy()
        for k in range(len(workers)):
            m = (widx == k) & inlier
            if not m.any():
                m = widx == k
            new[k] = float(np.mean(t[m] / pred1[m]))
        for dev in {w_device[w] for w in workers}:  # anchor: the device's fastest worker = 1
            ks = [k for k, w in enumerate(workers) if w_device[w] == dev]
            new[ks] /= new[ks].min()
        s_obs = new[widx]
        new_inlier = (widx < 0) | (t <= outlier_factor * s_obs * pred1)
        done = np.allclose(new, slow, rtol=1e-10, atol=0) and (new_inlier == inlier).all()
        slow, inlier = new, new_inlier
        if done:
            break
    return ({key: (float(ab[g, 0]), float(ab[g, 1])) for g, key in enumerate(keys)},
            dict(zip(workers, map(float, slow[:-1]))), inlier)


# --------------------------------------------------------------------------- network


def _mean_concurrency(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per message, the number of messages in flight in the same direction (itself
    included) averaged the way fair sharing slows it: its length ÷ ∫ 1/count dt."""
    times = np.concatenate([starts, ends])
    steps = np.concatenate([np.ones(len(starts)), -np.ones(len(ends))])
    order = np.argsort(times, kind="stable")
    times, count = times[order], np.cumsum(steps[order])
    inv = np.where(count > 0, 1.0 / np.maximum(count, 1.0), 0.0)
    area = np.concatenate([[0.0], np.cumsum(inv[:-1] * np.diff(times))])  # ∫ 1/count up to times[k]
    dur = ends - starts
    integral = np.interp(ends, times, area) - np.interp(starts, times, area)
    return np.where((dur > 0) & (integral > 0), dur / np.where(integral > 0, integral, 1.0), 1.0)


def _fit_link(worker: str, sizes: np.ndarray, times: np.ndarray, ps_s_per_byte: np.ndarray,
              base_bw_gbps: float, base_lat_s: float) -> LinkFit:
    """Fit t = L + bytes × max(1/bw, ps_s_per_byte): the worker NIC or its share of the PS
    NIC (given by the concurrency each message saw) limits the rate; L is the whole path's
    latency. Relative residuals; only gross outliers are dropped (a slow message is real
    time the simulator must account for)."""
    from scipy.optimize import least_squares
    from scipy.stats import median_abs_deviation

    keep = np.ones(len(times), dtype=bool)
    distinct = tuple(int(x) for x in np.unique(sizes))
    separable = len(distinct) >= 2 and distinct[-1] >= 1.1 * max(distinct[0], 1)
    inv_bw0 = 1.0 / (base_bw_gbps * BYTES_PER_S_PER_GBPS)

    def model(lat: float, inv_bw: float) -> np.ndarray:
        return lat + sizes * np.maximum(inv_bw, ps_s_per_byte)

    lat, inv_bw = base_lat_s, inv_bw0
    for _ in range(4):
        if separable:
            x0_inv, x0_lat = _linear_fit(sizes[keep], times[keep])
            sol = least_squares(lambda p: (model(p[0], p[1])[keep] - times[keep]) / times[keep],
                                [max(x0_lat, 0.0), max(x0_inv, 1e-15)], bounds=([0.0, 0.0], [np.inf, np.inf]),
                                x_scale=[max(float(np.median(times)), 1e-9), max(x0_inv, inv_bw0)])
            lat, inv_bw = float(sol.x[0]), float(sol.x[1])
        else:
            lat = float(np.mean((times - model(0.0, inv_bw0))[keep]))  # mean: times add up
        resid = times - model(lat, inv_bw)
        sigma = float(median_abs_deviation(resid[keep], scale="normal")) or 1e-12  # robust σ
        new_keep = np.abs(resid - np.median(resid[keep])) <= 20 * sigma  # only gross outliers
        if (new_keep == keep).all() or new_keep.sum() < 2:
            break
        keep = new_keep
    if separable and inv_bw > 0.01 * inv_bw0:
        return LinkFit(worker, 8.0 / inv_bw / 1e9, lat * 1e3, len(times), distinct, True)
    if separable:  # bigger messages took no longer: per-message overhead hides the bandwidth
        lat = max(0.0, float(np.mean((times - model(0.0, inv_bw0))[keep])))
        note = (f"message time does not grow with size ({distinct[0]}..{distinct[-1]} B): the per-message "
                f"overhead hides the bandwidth; kept {base_bw_gbps:g} Gbps and fitted the latency")
        return LinkFit(worker, base_bw_gbps, lat * 1e3, len(times), distinct, False, note)
    size = float(np.median(sizes[keep]))
    typical_s = float(np.median(times[keep]))
    if lat >= -0.02 * typical_s:  # within noise of 0: keep the bandwidth
        lat = max(lat, 0.0)
        note = (f"one message size ({int(size)} B): latency and bandwidth are not separable; kept bandwidth "
                f"{base_bw_gbps:g} Gbps and fitted the latency")
        return LinkFit(worker, base_bw_gbps, lat * 1e3, len(times), distinct, False, note)
    lat = min(base_lat_s, 0.5 * typical_s)
    bw = size / (typical_s - lat) / BYTES_PER_S_PER_GBPS
    note = (f"one message size ({int(size)} B): latency and bandwidth are not separable; messages beat the "
            f"base bandwidth, so kept latency {lat * 1e3:g} ms and fitted the bandwidth")
    return LinkFit(worker, bw, lat * 1e3, len(times), distinct, False, note)


# --------------------------------------------------------------------------- parameter server


def _ps_gaps(trace: Trace) -> list[float]:
    """Server time per update as the run saw it. asp/ssp: the gap between a push's end and
    the same worker's next pull's start. bsp: per round, the same gap of the worker whose
    push ended last: the round waits for it, so its wait is what lengthens the round (the
    others may see their reply before their own push's emulated end)."""
    plan = trace.header.get("plan") or {}
    syncs = [ph.get("sync") for ph in plan.get("phases", [])]
    per_worker: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for r in trace.records:
        if r["kind"] in ("push", "pull"):
            per_worker[(r["phase"], r["worker"])].append(r)
    rounds: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    gaps: list[float] = []
    for (phase, _), recs in per_worker.items():
        recs.sort(key=lambda r: (r["start_s"], r["kind"] == "pull"))
        k = 0
        for cur, nxt in zip(recs, recs[1:]):
            if cur["kind"] == "push" and nxt["kind"] == "pull":
                if phase < len(syncs) and syncs[phase] == "bsp":
                    rounds[(phase, k)].append((cur["end_s"], nxt["start_s"]))
                else:
                    gaps.append(max(0.0, nxt["start_s"] - cur["end_s"]))
                k += 1
    for pairs in rounds.values():  # the last pusher's wait: the round's critical path
        push_end_s, pull_start_s = max(pairs)
        gaps.append(max(0.0, pull_start_s - push_end_s))
    return gaps


def _exchange_gaps(trace: Trace) -> dict[str, list[float]]:
    """Per worker, the time from an interval's last compute to its push: the worker-local
    exchange overhead (`[[workers]] exchange_overhead_s`; the runtime encodes the push there,
    and emulates the cluster's overhead there)."""
    per_worker: dict[str, list[dict]] = defaultdict(list)
    for r in trace.records:
        if r["kind"] in ("compute", "push"):
            per_worker[r["worker"]].append(r)
    gaps: dict[str, list[float]] = defaultdict(list)
    for worker, recs in per_worker.items():
        recs.sort(key=lambda r: (r["start_s"], r["end_s"]))
        for cur, nxt in zip(recs, recs[1:]):
            if cur["kind"] == "compute" and nxt["kind"] == "push" and cur["phase"] == nxt["phase"]:
                gaps[worker].append(max(0.0, nxt["start_s"] - cur["end_s"]))
    return gaps


def _fit_exchange_overhead(traces: list[Trace]) -> dict[str, SpreadFit]:
    """Per worker, the median compute-to-push gap over all its exchanges."""
    gaps: dict[str, list[float]] = defaultdict(list)
    for t in traces:
        for worker, g in _exchange_gaps(t).items():
            gaps[worker] += g
    return {w: SpreadFit.of(g) for w, g in sorted(gaps.items()) if g}


def _fit_eval(traces: list[Trace]) -> SpreadFit | None:
    """The PS's evaluation time, `[ps] eval_s`: the median duration of the eval records
    that carry their start (the runtime's do), leaving out those at phase ends (they are
    part of `phase_overhead_s`). None when there are none."""
    durations = []
    for t in traces:
        phase_end_epochs, done = set(), 0
        for ph in (t.header.get("plan") or {}).get("phases", []):
            done += ph["epochs"]
            phase_end_epochs.add(float(done))
        durations += [max(0.0, r["t_s"] - r["start_s"]) for r in t.of_kind("eval")
                      if "start_s" in r and r["epoch"] not in phase_end_epochs]
    return SpreadFit.of(durations) if durations else None


def _with_overheads(cluster: Cluster, overhead: dict[str, SpreadFit], eval_fit: SpreadFit | None) -> Cluster:
    """The fitted cluster with the measured exchange overheads and evaluation time."""
    data = cluster.model_dump(mode="json")
    if eval_fit is not None:
        data["ps"]["eval_s"] = eval_fit.median_s
    if overhead:
        expanded = []  # one group per worker (named as worker_list names them), each its own overhead
        for g, w in zip([g for g in data["workers"] for _ in range(g["count"])], cluster.worker_list):
            one = dict(g, name=w.name, count=1)
            if w.name in overhead:
                one["exchange_overhead_s"] = overhead[w.name].median_s
            expanded.append(one)
        data["workers"] = expanded
    return cluster_from_dict(data)


def _fit_phase_overhead(traces: list[Trace]) -> float | None:
    """The mean time from one phase record's end to the next one's start (the mean: every
    phase boundary pays it once). None when no trace has two phases."""
    gaps = []
    for t in traces:
        phases = sorted(t.of_kind("phase"), key=lambda r: r["index"])
        gaps += [max(0.0, b["start_s"] - a["end_s"]) for a, b in zip(phases, phases[1:])]
    return float(np.mean(gaps)) if gaps else None


def _fit_ps_apply(traces: list[Trace]) -> float | None:
    """The median gap: under asp/ssp queueing behind other workers' updates is modelled
    by the simulator itself, so a typical gap, not the mean, is the server's own time."""
    gaps = [g for t in traces for g in _ps_gaps(t)]
    if not gaps:
        return None
    return float(np.median(gaps))


# --------------------------------------------------------------------------- wall-time logs


def _log_obs(logs, start: Cluster | None, first_index: int) -> list[_Obs]:
    """One observation per log row: its mean iteration (samples/iterations samples in
    wall_s/iterations seconds), exact under the linear model (traces/walltime.py)."""
    obs: list[_Obs] = []
    for j, log in enumerate(logs):
        if start is None:
            raise UserError(f"calibrate: {log.path} is a wall-time log; give --base (or a run trace) with its workers")
        for k, r in enumerate(log.rows):
            w = start.worker_by_name.get(r.worker)
            if w is None:
                raise UserError(f"{r.where}: worker {r.worker!r} is not in the cluster "
                                f"(has {', '.join(x.name for x in start.worker_list)})")
            if r.device is not None and r.device != w.device:
                raise UserError(f"{r.where}: worker {r.worker!r} is a {w.device!r} in the cluster, the log says {r.device!r}")
            obs.append(_Obs(w.device, r.resolution, r.samples / r.iterations, r.wall_s / r.iterations, r.worker,
                            float(k), f"{r.where}: {r.worker} {r.samples} samples at batch {r.batch}", first_index + j))
    return obs


# --------------------------------------------------------------------------- nonlinear compute

BEND_MIN_SIZES = 6  # distinct profiled batch sizes before a quadratic is considered
BEND_MIN_BIC_GAIN = 10.0  # "very strong" evidence (Kass & Raftery 1995)


def _bic(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Gaussian BIC of relative residuals (small batches weigh as much as large ones)."""
    rss = float(np.sum(((y - pred) / y) ** 2))
    return len(y) * np.log(max(rss, 1e-300) / len(y)) + k * np.log(len(y))


def _bend(fits: list[ComputeFit], obs: list[_Obs], slow: dict[str, float]) -> list[ComputeFit]:
    """t(B) = a·B + b + c·B² instead of the line, per (device, resolution), when its profile
    points cover at least BEND_MIN_SIZES batch sizes, the quadratic's BIC is lower by more
    than BEND_MIN_BIC_GAIN (both fitted on relative residuals), it is a valid profile
    (a, b >= 0, positive on 1..max_batch) and, where run iterations set the scale (see
    `_fit_compute`), it is scaled to them the same way and fits them no worse than the line."""
    out = []
    for f in fits:
        run = [(o.n, o.t_s / slow[o.worker]) for o in obs if o.worker and (o.device, o.resolution) == (f.device, f.resolution)]
        pts = [(o.n, o.t_s) for o in obs if not o.worker and (o.device, o.resolution) == (f.device, f.resolution)]
        x = np.array([p[0] for p in pts], dtype=float)
        y = np.array([p[1] for p in pts], dtype=float)
        if len(set(x.tolist())) < BEND_MIN_SIZES or np.any(y <= 0):
            out.append(f)
            continue
        lin = np.polyfit(x, y, 1, w=1 / y)
        quad = np.polyfit(x, y, 2, w=1 / y)
        gain = _bic(y, np.polyval(lin, x), 2) - _bic(y, np.polyval(quad, x), 3)
        if gain <= BEND_MIN_BIC_GAIN:
            out.append(f)
            continue
        scale = 1.0
        if run:
            rn = np.array([p[0] for p in run], dtype=float)
            rt = np.array([p[1] for p in run], dtype=float)
            scale = float(np.mean(rt / np.polyval(quad, rn)))
            rel_line = np.sum(((rt - (f.a * rn + f.b)) / rt) ** 2)
            rel_quad = np.sum(((rt - scale * np.polyval(quad, rn)) / rt) ** 2)
            if rel_quad > rel_line:  # the run does not bear the bend out
                out.append(f)
                continue
        cq, aq, bq = (float(v) * scale for v in quad)
        try:
            ResolutionProfile(a=aq, b=bq, c=cq, max_batch=f.max_batch)
        except ValueError:
            out.append(f)
            continue
        if f.points == len(pts):  # the fit was judged on these points: judge the curve on them too
            pred = aq * x + bq + cq * x * x
            rel = np.abs(y - pred) / pred
            worst = int(np.argmax(rel))
            f = replace(f, r2=_r2(y, pred), worst_residual_s=float(abs(y - pred)[worst]),
                        worst_relative=float(rel[worst]))
        out.append(replace(f, a=aq, b=bq, c=cq, shape=f"quadratic (BIC -{gain:.0f} vs linear)"))
    return out


# --------------------------------------------------------------------------- contention


@dataclass(frozen=True)
class DriftFit:
    """How a worker's iteration times moved during one trace: the median measured/fitted
    ratio of its first and last third of iterations. Contention that comes and goes
    (other jobs on the machine) shows as drift; a cluster property does not drift."""

    trace: str
    worker: str
    first: float
    last: float
    iterations: int

    @property
    def change(self) -> float:
        return self.last / self.first - 1.0


def _residual_spread(obs: list[_Obs], fits: dict[tuple[str, int], ComputeFit], slow,
                     inlier: np.ndarray) -> dict[tuple[str, int], SpreadFit]:
    """Per (device, resolution), the spread of measured/fitted over the inlier iterations
    (profile points and run iterations): how well one line (or curve) stands for them."""
    ratios: dict[tuple[str, int], list[float]] = defaultdict(list)
    for o, ok in zip(obs, inlier):
        f = fits[(o.device, o.resolution)]
        pred = (slow[o.worker] if o.worker else 1.0) * (f.a * o.n + f.b + f.c * o.n * o.n)
        if ok and pred > 0:
            ratios[(o.device, o.resolution)].append(o.t_s / pred)
    return {k: SpreadFit.of(v) for k, v in sorted(ratios.items())}


def _fit_drift(sources: list[str], obs: list[_Obs], ab, slow, min_iterations: int = 30) -> list[DriftFit]:
    """Per (trace, worker) with at least `min_iterations` run iterations, the drift of its
    measured/fitted ratio from the first third to the last (medians: transient stragglers
    do not move them). Each ratio is taken relative to the worker's median at its
    resolution first: one slowdown per worker cannot fit every resolution alike (on shared
    cores the emulated slowdowns differ by a few percent per resolution), and a plan that
    changes resolution between phases would otherwise show that misfit as drift."""
    series: dict[tuple[int, str], list[tuple[float, float, int]]] = defaultdict(list)
    for o in obs:
        if o.worker:
            a, b = ab[(o.device, o.resolution)]
            pred = slow[o.worker] * (a * o.n + b)
            if pred > 0:
                series[(o.trace, o.worker)].append((o.start_s, o.t_s / pred, o.resolution))
    out = []
    for (ti, worker), pts in sorted(series.items()):
        if len(pts) < min_iterations:
            continue
        by_resolution = defaultdict(list)
        for _, v, res in pts:
            by_resolution[res].append(v)
        median_at = {res: float(np.median(vs)) for res, vs in by_resolution.items()}
        r = np.array([v / median_at[res] for _, v, res in sorted(pts)])
        third = len(r) // 3
        out.append(DriftFit(sources[ti], worker, float(np.median(r[:third])), float(np.median(r[-third:])),
                            len(r)))
    return out


# --------------------------------------------------------------------------- stragglers


def _fit_stragglers(obs: list[_Obs], ab, slow, outlier_factor: float, min_run: int) -> StragglerFit:
    """Episodes = runs of consecutive iterations slower than `outlier_factor` × the fit.

    The simulator starts episodes as a Poisson process (rate λ) lasting an exponential
    time (mean d). Overlapping episodes merge into one run of slow iterations, so what a
    trace shows is runs covering a fraction c of each worker's time, of mean length L.
    For that process c = 1 − exp(−λd) and L = (exp(λd) − 1) / λ; solving gives λ and d.
    The factor is the slow iterations' total time over their fitted time."""
    by_worker: dict[tuple[int, str], list[_Obs]] = defaultdict(list)
    for o in obs:
        if o.worker:
            by_worker[(o.trace, o.worker)].append(o)
    episodes: list[tuple[float, float]] = []
    slow_t = slow_fit = 0.0
    slow_iters = iters = 0
    observed_s = 0.0
    for recs in by_worker.values():
        recs.sort(key=lambda o: o.start_s)
        observed_s += recs[-1].start_s + recs[-1].t_s - recs[0].start_s
        iters += len(recs)
        run: list[tuple[_Obs, float]] = []
        for o in recs + [None]:
            fit = None
            if o is not None:
                a, b = ab[(o.device, o.resolution)]
                fit = slow[o.worker] * (a * o.n + b)
            if fit is not None and o.t_s > outlier_factor * fit:
                run.append((o, fit))
                continue
            if len(run) >= min_run:
                episodes.append((run[0][0].start_s, run[-1][0].start_s + run[-1][0].t_s))
                slow_t += sum(x.t_s for x, _ in run)
                slow_fit += sum(f for _, f in run)
                slow_iters += len(run)
            run = []
    if not episodes or observed_s <= 0:
        return StragglerFit(0.0, 2.0, 30.0, 0, observed_s)
    spans = [e - s for s, e in episodes]
    run_s = float(np.mean(spans))
    factor = slow_t / slow_fit
    covered = min(float(np.sum(spans)) / observed_s, 0.95)
    x = -np.log1p(-covered)  # λ·d
    rate_per_s = np.expm1(x) / run_s
    return StragglerFit(float(rate_per_s * 3600.0), factor, float(x / rate_per_s), len(episodes), observed_s)


def _fit_jitter(obs: list[_Obs], ab, slow, inlier: np.ndarray) -> float | None:
    """The coefficient of variation of the run's inlier iterations around their fit
    (`slowdown × (a·n + b)`), each weighted by its fitted time (the makespan is a sum of
    times, so long iterations' noise matters more); the outliers are the stragglers'
    part. None without run records."""
    fit_s, t_s = [], []
    for o, keep in zip(obs, inlier):
        if o.worker and keep:
            a, b = ab[(o.device, o.resolution)]
            fit_s.append(slow[o.worker] * (a * o.n + b))
            t_s.append(o.t_s)
    if len(fit_s) < 2:
        return None
    w, r = np.array(fit_s), np.array(t_s) / np.array(fit_s)
    mean = float(np.average(r, weights=w))
    cv = float(np.sqrt(np.average((r - mean) ** 2, weights=w)) / mean)
    return cv if cv >= JITTER_FLOOR_CV else 0.0  # rounding noise of a noiseless trace is no jitter


JITTER_FLOOR_CV = 1e-6


# --------------------------------------------------------------------------- main entry


def _start_cluster(traces: list[Trace], base: Cluster | None) -> Cluster | None:
    if base is not None:
        return base
    for trace in traces:
        if trace.header.get("cluster"):
            return cluster_from_dict(trace.header["cluster"], f"{trace.path} (header cluster)")
    return None


def calibrate(traces: list[Trace], base: Cluster | None = None, *, outlier_factor: float = 1.5,
              straggler_min_run: int = 1, absorb_gaps: bool = True, bad_r2: float = 0.9,
              bad_relative: float = 0.25, drift_tolerance: float = 0.10,
              logs: "list[WallTimeLog] | tuple" = ()) -> Calibration:
    """Fit a cluster to `traces` (profile and/or run traces), starting from `base` (or the
    first run trace's header cluster): measured parts replace the base's, the rest is kept.
    A worker whose iteration times drift by more than `drift_tolerance` during a trace is
    flagged in the warnings (contention, not the cluster). `logs`: wall-time logs
    (traces.walltime), fitted like compute records."""
    if not traces and not logs:
        raise UserError("calibrate: give at least one trace")
    empty = [t.path for t in traces if not t.records]
    if empty:
        raise UserError(f"calibrate: {', '.join(empty)}: no records (a header only), nothing to fit; "
                        f"give a trace of a run or a profile")
    obs = _collect(traces, base, absorb_gaps)
    start = _start_cluster(traces, base)
    obs += _log_obs(logs, start, len(traces))
    if not obs and start is None:
        raise UserError("calibrate: the traces hold no profile or compute records and no cluster; "
                        "profile first (`hybridps profile`) or pass a run trace")
    warnings: list[str] = []
    ab, slow, inlier = _fit_compute(obs, outlier_factor) if obs else ({}, {}, np.ones(0, dtype=bool))

    # ---- per (device, resolution) report
    fits: list[ComputeFit] = []
    for key, (a, b) in ab.items():
        idx = [i for i, o in enumerate(obs) if (o.device, o.resolution) == key]
        if a == 0 and b == 0:
            raise UserError(f"calibrate: device {key[0]!r} at resolution {key[1]} has only zero durations")
        # judge the line on what set it: the run's iterations where there are some (the
        # profile then only gave the shape), else the profile points
        run_sel = [i for i in idx if inlier[i] and obs[i].worker]
        sel = run_sel or [i for i in idx if inlier[i]] or idx  # all outliers: judge on every point
        y = np.array([obs[i].t_s / (slow[obs[i].worker] if obs[i].worker else 1.0) for i in sel])
        x = np.array([obs[i].n for i in sel], dtype=float)
        pred = a * x + b
        sizes = tuple(sorted({int(v) for v in x}))
        r2 = _r2(y, pred) if len(sizes) >= 2 else float("nan")
        rel = np.abs(y - pred) / pred
        worst = int(np.argmax(rel))
        profiled = [obs[i].n for i in idx if not obs[i].worker]
        used = [obs[i].n for i in idx]
        old = None
        if start is not None and key[0] in start.devices:
            old = start.devices[key[0]].resolutions.get(key[1])
        if profiled:
            max_batch = int(max(profiled))
        elif old is not None:
            max_batch = max(old.max_batch, int(max(used)))
        else:
            max_batch = int(max(used))
        fit = ComputeFit(key[0], key[1], a, b, max_batch, len(sel), sizes, r2,
                         float(abs(y - pred)[worst]), float(rel[worst]), obs[sel[worst]].where)
        fits.append(fit)
        if len(sizes) < 2:
            warnings.append(f"device {key[0]} at resolution {key[1]}: every iteration had {sizes[0]} samples, so "
                            f"a and b are not separable; b set to 0 (profile more batch sizes)")
        elif len(sizes) >= 3 and r2 < bad_r2:
            warnings.append(f"device {key[0]} at resolution {key[1]}: the linear model fits badly (R² {r2:.3f}); "
                            f"worst: {fit.worst_where}")
        if fit.worst_relative > bad_relative:
            warnings.append(f"device {key[0]} at resolution {key[1]}: a point is {fit.worst_relative:.0%} off the "
                            f"fit ({fit.worst_residual_s * 1e3:.2f} ms): {fit.worst_where}")

    fits = _bend(fits, obs, slow)
    for f in fits:  # a bent fit replaces the line's verdicts with its own
        if f.c:
            warnings = [w for w in warnings if not w.startswith(f"device {f.device} at resolution {f.resolution}:")]
            if f.worst_relative > bad_relative:
                warnings.append(f"device {f.device} at resolution {f.resolution}: a point is {f.worst_relative:.0%} "
                                f"off the {f.shape} fit ({f.worst_residual_s * 1e3:.2f} ms): {f.worst_where}")
    worker_fits = [WorkerFit(w, next(o.device for o in obs if o.worker == w), s,
                             sum(1 for o in obs if o.worker == w)) for w, s in sorted(slow.items())]

    # ---- links: per message its bytes, effective duration and PS-share seconds per byte
    links: list[LinkFit] = []
    msgs: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    ps = start.ps if start is not None else PSSpec()
    ps_bytes_per_s = ps.total_bandwidth_bytes_per_s
    overhead = _fit_exchange_overhead(traces) if start is not None else {}
    for trace in traces:
        if not (trace.of_kind("push") or trace.of_kind("pull")):
            continue
        per_worker = _effective_records(trace)
        for kind in ("push", "pull"):
            recs = [r for rs in per_worker.values() for r in rs if r["kind"] == kind]
            if not recs:
                continue
            conc = _mean_concurrency(np.array([r["start_s"] for r in recs], dtype=float),
                                     np.array([r["end_s"] for r in recs], dtype=float))
            for r, k in zip(recs, conc):
                t = r["eff_s"] if absorb_gaps else r["end_s"] - r["start_s"]
                if kind == "push" and absorb_gaps and r["worker"] in overhead:  # the overhead is not the link's
                    t = max(r["end_s"] - r["start_s"], t - overhead[r["worker"]].median_s)
                msgs[r["worker"]].append((r["bytes"], t, k / ps_bytes_per_s))
    for worker, triples in sorted(msgs.items()):
        bw0, lat0 = 10.0, 0.05
        if start is not None and worker in start.worker_by_name:
            w = start.worker_by_name[worker]
            bw0, lat0 = w.bandwidth_gbps, w.latency_ms
        arr = np.array(triples, dtype=float)
        lf = _fit_link(worker, arr[:, 0], arr[:, 1], arr[:, 2], bw0, (lat0 + ps.latency_ms) / 1e3)
        # the simulator adds the PS's latency to every message: the worker keeps the rest
        lf = LinkFit(lf.worker, lf.bandwidth_gbps, max(0.0, lf.latency_ms - ps.latency_ms), lf.messages,
                     lf.sizes, lf.separable, lf.note)
        links.append(lf)
        if lf.note:
            warnings.append(f"worker {worker}: {lf.note}")

    strag = (_fit_stragglers(obs, ab, slow, outlier_factor, straggler_min_run)
             if any(o.worker for o in obs) else None)
    jitter_cv = _fit_jitter(obs, ab, slow, inlier) if any(o.worker for o in obs) else None
    ps_apply_s = _fit_ps_apply(traces)
    params = next((t.header["job"]["model"]["parameters"] for t in traces if (t.header.get("job") or {}).get("model")),
                  None)
    if start is not None and ps_apply_s is not None and params:
        per_mparam = ps_apply_s / (params / start.ps.count / 1e6)
        start = start.model_copy(update={"ps": start.ps.model_copy(update={"apply_s_per_mparam": per_mparam})})
    phase_overhead_s = _fit_phase_overhead(traces)
    if start is not None and phase_overhead_s is not None:
        start = start.model_copy(update={"ps": start.ps.model_copy(update={"phase_overhead_s": phase_overhead_s})})
    cluster = _build_cluster(start, fits, worker_fits, links, strag, jitter_cv)
    spread = _residual_spread(obs, {(f.device, f.resolution): f for f in fits}, slow, inlier) if obs else {}
    drift = _fit_drift([str(t.path) for t in traces] + [lg.path for lg in logs], obs, ab, slow) if obs else []
    warnings += [f"{d.trace}: worker {d.worker}'s iterations drift {d.change:+.0%} from the first third to the "
                 f"last ({d.iterations} iterations): contention that changed during the run, not a cluster "
                 f"property; the fit averages it (rerun on a quiet machine or calibrate on part of the run)"
                 for d in drift if abs(d.change) > drift_tolerance]
    eval_fit = _fit_eval(traces)
    cluster = _with_overheads(cluster, overhead, eval_fit) if (overhead or eval_fit) else cluster
    return Calibration(cluster, fits, worker_fits, links, strag, ps_apply_s, jitter_cv, phase_overhead_s, warnings,
                       exchange_overhead=overhead, eval_fit=eval_fit, residual_spread=spread, drift=drift)


def _build_cluster(start: Cluster | None, fits: list[ComputeFit], workers: list[WorkerFit],
                   links: list[LinkFit], strag: StragglerFit | None, jitter_cv: float | None = None) -> Cluster:
    devices: dict[str, dict[int, ResolutionProfile]] = {}
    if start is not None:
        devices = {name: dict(d.resolutions) for name, d in start.devices.items()}
    for f in fits:
        devices.setdefault(f.device, {})[f.resolution] = ResolutionProfile(a=f.a, b=f.b, max_batch=f.max_batch, c=f.c)
    device_specs = {name: DeviceSpec(resolutions=res) for name, res in devices.items()}
    if start is None:  # profile traces only: one worker per profiled device
        groups = [WorkerGroup(name=name, device=name) for name in sorted(device_specs)]
        return Cluster(format="hybridps.cluster/1", ps=PSSpec(), devices=device_specs, workers=groups)
    slow = {w.worker: w.slowdown for w in workers}
    link = {lf.worker: lf for lf in links}
    unknown = sorted((set(slow) | set(link)) - set(start.worker_by_name))
    if unknown:  # never drop fitted values silently
        raise UserError(f"calibrate: the traces measured worker(s) {', '.join(unknown)}, which the base cluster "
                        f"does not have (it has {', '.join(w.name for w in start.worker_list)}); omit --base to "
                        f"use the trace's own cluster, or give a base with those workers")
    if not slow and not link:
        groups = list(start.workers)
    else:  # fitted per worker: one group per worker, keeping the expanded names
        groups = []
        for w in start.worker_list:
            lf = link.get(w.name)
            groups.append(WorkerGroup(name=w.name, device=w.device, count=1,
                                      bandwidth_gbps=lf.bandwidth_gbps if lf else w.bandwidth_gbps,
                                      latency_ms=lf.latency_ms if lf else w.latency_ms,
                                      slowdown=slow.get(w.name, w.slowdown)))
    stragglers = start.stragglers
    if strag is not None:
        stragglers = StragglerSpec(rate_per_hour=min(strag.rate_per_hour, MAX_STRAGGLER_RATE_PER_HOUR), slowdown=strag.slowdown,
                                   mean_duration_s=strag.mean_duration_s, workers=[],
                                   seed=start.stragglers.seed)
    if jitter_cv is not None:
        stragglers = stragglers.model_copy(update={"jitter_cv": min(jitter_cv, 2.0)})
    return Cluster(format="hybridps.cluster/1", ps=start.ps, devices=device_specs, workers=groups,
                   stragglers=stragglers)


def format_report(cal: Calibration) -> str:
    """The human-readable fit report `hybridps calibrate` prints."""
    lines = ["compute  t = slowdown × (a·n + b)"]
    lines.append(f"  {'device':<12} {'res':>4} {'a (ms/sample)':>14} {'b (ms)':>9} {'R²':>7} {'worst':>9} "
                 f"{'points':>7} {'max_batch':>9}")
    for f in cal.compute:
        r2 = "n/a" if np.isnan(f.r2) else f"{f.r2:.4f}"
        lines.append(f"  {f.device:<12} {f.resolution:>4} {f.a * 1e3:>14.5f} {f.b * 1e3:>9.3f} {r2:>7} "
                     f"{f.worst_relative:>8.1%} {f.points:>7} {f.max_batch:>9}")
    if cal.workers or cal.links:
        lines.append("workers")
        lines.append(f"  {'name':<12} {'device':<12} {'slowdown':>8} {'iters':>6} {'bandwidth (Gbps)':>17} "
                     f"{'latency (ms)':>13} {'msgs':>5}")
        link = {lf.worker: lf for lf in cal.links}
        slow = {w.worker: w for w in cal.workers}
        for name in sorted(set(link) | set(slow)):
            w, lf = slow.get(name), link.get(name)
            lines.append(f"  {name:<12} {(w.device if w else '-'):<12} "
                         f"{(f'{w.slowdown:.3f}' if w else '-'):>8} {(w.iterations if w else 0):>6} "
                         f"{(f'{lf.bandwidth_gbps:.4g}' if lf else '-'):>17} "
                         f"{(f'{lf.latency_ms:.3f}' if lf else '-'):>13} {(lf.messages if lf else 0):>5}")
    if cal.stragglers is not None:
        s = cal.stragglers
        if s.episodes:
            lines.append(f"stragglers: {s.episodes} episode(s) in {s.observed_s:.1f} worker-seconds: "
                         f"rate {s.rate_per_hour:.3g}/hour, slowdown {s.slowdown:.3g}×, "
                         f"mean duration {s.mean_duration_s:.3g} s")
        else:
            lines.append(f"stragglers: none detected in {s.observed_s:.1f} worker-seconds")
    if cal.jitter_cv is not None:
        lines.append(f"jitter: iterations vary by {cal.jitter_cv:.1%} (coefficient of variation) around the fit "
                     f"-> jitter_cv {cal.cluster.stragglers.jitter_cv:.4g}")
    if cal.phase_overhead_s is not None:
        lines.append(f"between phases: {cal.phase_overhead_s * 1e3:.1f} ms (evaluation, checkpoint) "
                     f"-> phase_overhead_s {cal.cluster.ps.phase_overhead_s:.4g}")
    for f in cal.compute:
        if f.c:
            lines.append(f"  {f.device} {f.resolution}: {f.shape}: c = {f.c:.4g} s/sample²")
    for (dev, res), f in cal.residual_spread.items():
        lines.append(f"residuals {dev} {res}: measured/fit p10-p90 {f.p10_s:.3f}-{f.p90_s:.3f} over {f.n} "
                     f"iterations (outliers beyond the straggler threshold excluded)")
    for name, f in cal.exchange_overhead.items():
        lines.append(f"exchange overhead {name}: median {f.median_s * 1e3:.1f} ms over {f.n} exchanges "
                     f"(p10-p90 {f.p10_s * 1e3:.1f}-{f.p90_s * 1e3:.1f} ms) -> exchange_overhead_s")
    if cal.eval_fit is not None:
        f = cal.eval_fit
        lines.append(f"evaluation: median {f.median_s * 1e3:.1f} ms over {f.n} evaluations "
                     f"(p10-p90 {f.p10_s * 1e3:.1f}-{f.p90_s * 1e3:.1f} ms) -> eval_s {cal.cluster.ps.eval_s:.4g}")
    if cal.ps_apply_s is not None:
        lines.append(f"parameter server: {cal.ps_apply_s * 1e3:.3f} ms per update (push end to pull start) "
                     f"-> apply_s_per_mparam {cal.cluster.ps.apply_s_per_mparam:.4g}")
    return "\n".join(lines)  # cal.warnings are the caller's to print, on stderr


def calibration_json(cal: Calibration) -> dict:
    """What `calibrate --json` prints: every fit (units in the keys, seconds unless named),
    the warnings and the fitted cluster; NaN (an R² of one batch size) becomes null."""

    def fits(items) -> list[dict]:
        return [asdict(f) for f in items]

    out = {"compute": fits(cal.compute), "workers": fits(cal.workers), "links": fits(cal.links),
           "stragglers": asdict(cal.stragglers) if cal.stragglers else None,
           "ps_apply_s": cal.ps_apply_s, "jitter_cv": cal.jitter_cv, "phase_overhead_s": cal.phase_overhead_s,
           "exchange_overhead": {w: asdict(f) for w, f in cal.exchange_overhead.items()},
           "residual_spread": [{"device": d, "resolution": r, **asdict(f)} for (d, r), f in cal.residual_spread.items()],
           "drift": [{**asdict(d), "change": d.change} for d in cal.drift],
           "eval": asdict(cal.eval_fit) if cal.eval_fit else None,
           "warnings": list(cal.warnings), "cluster": cal.cluster.model_dump(mode="json")}
    return _finite_or_none(out)


def _finite_or_none(value):
    """JSON has no NaN or infinity: null instead."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value
