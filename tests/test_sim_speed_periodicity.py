"""bench/sim_speed.py's periodicity test (case (f)): the period finder on known sequences."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from sim_speed import best_period, compute_intervals  # noqa: E402


def test_exact_period_found_with_zero_difference():
    pattern = [0.19, 0.2, 0.21]
    seqs = [pattern * 4, [0.5, 0.6, 0.7] * 4]
    assert best_period(seqs, max_p=5) == (3, 0.0)


def test_aperiodic_sequence_leaves_a_difference():
    seqs = [[0.19, 0.2, 0.19, 0.19, 0.2, 0.2, 0.19, 0.19, 0.19, 0.2]]
    p, diff = best_period(seqs, max_p=5)
    assert diff > 0.04  # no p <= 5 repeats it


def test_period_must_repeat_min_repeats_times():
    seqs = [[1.0, 2.0, 3.0, 4.0, 1.0, 2.0]]  # period 4 seen only 1.5 times
    p, diff = best_period(seqs, max_p=4, min_repeats=2)
    assert p <= 3 and diff > 0


def test_intervals_leave_out_partial_batch_and_later_epochs():
    def rec(epoch, step, start, **kw):
        return {"kind": "compute", "worker": "w", "epoch": epoch, "step": step, "start_s": start, **kw}
    records = [rec(0, 0, 0.0), rec(0, 1, 1.0), rec(0, 2, 3.0), rec(0, 3, 3.5, samples=5),
               rec(1, 0, 4.0), rec(1, 1, 6.0), rec(2, 0, 9.0), {"kind": "push", "worker": "w"}]
    assert compute_intervals(records, epochs=2) == [{"w": [1.0, 2.0]}, {"w": [2.0]}]
