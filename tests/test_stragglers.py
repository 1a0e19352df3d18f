"""Transient straggler episodes: a Poisson process of exponential-length episodes that
may overlap, shared by the simulator and the runtime."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hybridps.errors import SpecError
from hybridps.spec import cluster_from_dict
from hybridps.stragglers import StragglerSchedule


def _cluster(rate_per_hour: float, mean_duration_s: float, workers: list[str] | None = None):
    return cluster_from_dict({
        "format": "hybridps.cluster/1",
        "devices": {"d": {"resolutions": {"32": {"a": 0.001, "b": 0.01, "max_batch": 64}}}},
        "workers": [{"name": "w", "device": "d", "count": 2}],
        "stragglers": {"rate_per_hour": rate_per_hour, "slowdown": 3.0, "mean_duration_s": mean_duration_s,
                       "workers": workers or [], "seed": 7},
    })


def test_time_share_in_overlapping_episodes_matches_the_poisson_formula():
    # M/G/inf: the chance that at least one episode covers a given instant is 1 - exp(-rate * mean_duration)
    rate_per_hour, mean_s = 1e5, 0.01
    sched = StragglerSchedule(_cluster(rate_per_hour, mean_s))
    times = np.random.default_rng(0).uniform(10.0, 4000.0, 40_000)
    share = np.mean([sched.factor_at("w0", float(t)) > 1 for t in np.sort(times)])
    expected = 1 - math.exp(-rate_per_hour / 3600 * mean_s)
    assert share == pytest.approx(expected, abs=0.01)
    assert {sched.factor_at("w1", 5.0 + k * 0.37) for k in range(2000)} == {1.0, 3.0}


def test_episodes_are_the_same_however_far_ahead_they_are_drawn():
    far, near = StragglerSchedule(_cluster(60.0, 5.0)), StragglerSchedule(_cluster(60.0, 5.0))
    far.factor_at("w0", 10_000.0)  # one big extension
    for t in range(0, 10_000, 50):  # many small ones
        near.factor_at("w0", float(t))
    assert far.episodes("w0", 9_000.0) == near.episodes("w0", 9_000.0)
    assert len(far.episodes("w0", 9_000.0)) == pytest.approx(150, rel=0.25)  # 60/hour for 2.5 hours


def test_only_listed_workers_straggle_and_seeds_differ_per_worker():
    sched = StragglerSchedule(_cluster(600.0, 30.0, workers=["w1"]))
    assert sched.episodes("w0", 3600.0) == []
    assert len(sched.episodes("w1", 3600.0)) > 100
    both = StragglerSchedule(_cluster(600.0, 30.0))
    assert both.episodes("w0", 3600.0) != both.episodes("w1", 3600.0)


def test_an_absurd_rate_is_rejected_on_load():
    with pytest.raises(SpecError, match=r"stragglers.rate_per_hour: input should be less than or equal to 100000"):
        _cluster(1e12, 30.0)
