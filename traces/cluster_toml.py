"""Write a Cluster as cluster.toml (hybridps.cluster/1) by hand: the standard library reads
TOML but does not write it, and the format is small enough not to need a dependency.

`load_cluster(path)` of the output gives back an equal Cluster (floats are written with
`repr`, which round-trips exactly).
"""

from __future__ import annotations

import json
import math
import re

from hybridps.spec import CLUSTER_FORMAT, Cluster

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"cannot write {v!r} to cluster.toml")
        return repr(v)  # always has '.' or 'e', so it reads back as a float
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def cluster_to_toml(cluster: Cluster, comment: str = "") -> str:
    """The cluster as TOML text; `comment` lines go on top as '# ...'."""
    out: list[str] = [f"# {line}".rstrip() for line in comment.splitlines()]
    out.append(f"format = {_value(CLUSTER_FORMAT)}")
    ps = cluster.ps
    out += ["", "[ps]", f"count = {ps.count}", f"bandwidth_gbps = {_value(float(ps.bandwidth_gbps))}",
            f"latency_ms = {_value(float(ps.latency_ms))}",
            f"apply_s_per_mparam = {_value(float(ps.apply_s_per_mparam))}"]
    if ps.phase_overhead_s:
        out.append(f"phase_overhead_s = {_value(float(ps.phase_overhead_s))}")
    if ps.eval_s:
        out.append(f"eval_s = {_value(float(ps.eval_s))}")
    for dev_name in sorted(cluster.devices):
        for res, prof in sorted(cluster.devices[dev_name].resolutions.items()):
            out += ["", f"[devices.{_key(dev_name)}.resolutions.{res}]",
                    f"a = {_value(float(prof.a))}", f"b = {_value(float(prof.b))}",
                    f"max_batch = {prof.max_batch}"]
            if prof.c:
                out.append(f"c = {_value(float(prof.c))}")
    for g in cluster.workers:
        out += ["", "[[workers]]", f"name = {_value(g.name)}", f"device = {_value(g.device)}",
                f"count = {g.count}", f"bandwidth_gbps = {_value(float(g.bandwidth_gbps))}",
                f"latency_ms = {_value(float(g.latency_ms))}", f"slowdown = {_value(float(g.slowdown))}"]
        if g.exchange_overhead_s:
            out.append(f"exchange_overhead_s = {_value(float(g.exchange_overhead_s))}")
    st = cluster.stragglers
    out += ["", "[stragglers]", f"rate_per_hour = {_value(float(st.rate_per_hour))}",
            f"slowdown = {_value(float(st.slowdown))}", f"mean_duration_s = {_value(float(st.mean_duration_s))}",
            f"workers = {_value(list(st.workers))}", f"seed = {st.seed}"]
    if st.jitter_cv:
        out.append(f"jitter_cv = {_value(float(st.jitter_cv))}")
    return "\n".join(out) + "\n"
