"""Estimators of the gradient noise scale B_simple = tr(Sigma) / |G|^2 from squared norms
and dot products of batch-mean gradients (plain floats: the runtime's PS, calibration and
tests all feed them; numpy only, no torch).

Source: McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch
Training", appendix A. With G the true gradient, Sigma the per-sample gradient covariance
and G_B a gradient averaged over B independent samples,

    E |G_B|^2 = |G|^2 + tr(Sigma) / B.

two_batch    (bsp rounds) per round the workers' gradients are the small batches and the
             batch-weighted average the PS applies is the big one; two equations give
             unbiased |G|^2 and tr(Sigma) per round.
differenced  (asp/ssp) consecutive pushes g_a, g_b from disjoint batches at nearly the same
             weights: E|g_a - g_b|^2 = tr(Sigma) (1/B_a + 1/B_b), E[g_a . g_b] = |G|^2.

Both average |G|^2 and tr(Sigma) separately over rounds and report the ratio of the means
(the paper's advice: the ratio of per-round estimates is badly biased); the standard error
of that ratio comes from a delete-one-block jackknife over contiguous blocks of rounds
(blocks absorb the correlation of overlapping consecutive pairs and of slowly moving
weights).

Finite training sets (`population` = N): the runtime draws each epoch's batches without
replacement from a permutation of N samples, so batches of one round are disjoint and

    E |G_B|^2 = |G|^2 + S (1/B - 1/N),   E[g_a . g_b] = |G|^2 - S/N  (disjoint a, b),

with G the full-data mean gradient and S the trace of the per-sample gradients' sample
covariance (divisor N - 1). Ignoring this biases |G|^2 low by S/(N - 1): 21% on digits at
initialisation (S / |G|^2 = 300, N = 1437), hence `population`. With population=None the
formulas are the paper's (independent draws).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class NoiseEstimate:
    estimator: str  # "two-batch" | "differenced"
    noise_scale: float  # tr(Sigma) / |G|^2, in samples
    grad_sq: float  # |G|^2, mean over rounds
    trace_cov: float  # tr(Sigma), mean over rounds
    stderr: float  # of noise_scale (block jackknife)
    rounds: int  # rounds (two-batch) or pairs (differenced) averaged
    batch_small: float | None = None  # two-batch: the harmonic mean of the workers' batches (mean of rounds)
    batch_big: float | None = None  # two-batch: the round's total batch (mean of rounds)

    def record(self, phase: int, t_s: float) -> dict:
        """The trace's `noise` record (traces/records.py)."""
        rec = {"kind": "noise", "phase": phase, "t_s": t_s, "estimator": self.estimator,
               "noise_scale": self.noise_scale, "grad_sq": self.grad_sq, "trace_cov": self.trace_cov,
               "stderr": self.stderr, "rounds": self.rounds}
        if self.batch_small is not None:
            rec["batch_small"] = self.batch_small
            rec["batch_big"] = self.batch_big
        return rec


def ratio_of_means(num: np.ndarray, den: np.ndarray, blocks: int = 20) -> tuple[float, float]:
    """mean(num) / mean(den) and its delete-one-block jackknife standard error (contiguous
    blocks, at most `blocks` of them). The ratio is nan when mean(den) <= 0."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    n = len(num)
    if n == 0 or den.sum() <= 0:
        return float("nan"), float("nan")
    ratio = float(num.sum() / den.sum())
    k = min(blocks, n)
    if k < 2:
        return ratio, float("nan")
    edges = np.linspace(0, n, k + 1).astype(int)
    bn = np.add.reduceat(num, edges[:-1])
    bd = np.add.reduceat(den, edges[:-1])
    rest_d = den.sum() - bd
    with np.errstate(divide="ignore", invalid="ignore"):
        reps = (num.sum() - bn) / rest_d
    if not np.all(np.isfinite(reps)) or np.any(rest_d <= 0):
        return ratio, float("nan")
    se = float(np.sqrt((k - 1) / k * np.sum((reps - reps.mean()) ** 2)))
    return ratio, se


def two_batch(batches: Sequence[Sequence[float]], small_sq: Sequence[Sequence[float]],
              big_sq: Sequence[float], population: int | None = None, blocks: int = 20) -> NoiseEstimate | None:
    """Per round r: the workers' batches `batches[r]`, the squared norms of their pushed mean
    gradients `small_sq[r]`, and the squared norm of the batch-weighted average `big_sq[r]`.

    Unequal batches are handled exactly: E[mean_i |g_i|^2] = |G|^2 + tr(Sigma) mean_i(1/b_i),
    so the small batch is the harmonic mean of the b_i and |G_small|^2 the plain mean of the
    |g_i|^2; the big batch is sum_i b_i. Rounds with fewer than two workers carry no
    information and are skipped. None when fewer than two rounds remain."""
    inv_n = 1.0 / population if population else 0.0
    g2, tr, bs_all, bb_all = [], [], [], []
    for b, s, big in zip(batches, small_sq, big_sq):
        b = np.asarray(b, dtype=np.float64)
        if len(b) < 2:
            continue
        bs = len(b) / np.sum(1.0 / b)
        bb = float(np.sum(b))
        gs = float(np.mean(s))
        s_r = (gs - big) / (1.0 / bs - 1.0 / bb)
        tr.append(s_r)
        g2.append(big - s_r * (1.0 / bb - inv_n))
        bs_all.append(bs)
        bb_all.append(bb)
    if len(g2) < 2:
        return None
    ratio, se = ratio_of_means(np.array(tr), np.array(g2), blocks)
    return NoiseEstimate("two-batch", ratio, float(np.mean(g2)), float(np.mean(tr)), se, len(g2),
                         float(np.mean(bs_all)), float(np.mean(bb_all)))


def differenced(batches: Sequence[float], sq: Sequence[float], dot_prev: Sequence[float],
                population: int | None = None, blocks: int = 20) -> NoiseEstimate | None:
    """Consecutive pushes k-1, k: batches `batches[k]`, squared norms `sq[k]` and the dot
    product with the previous push `dot_prev[k]` (`dot_prev[0]` is ignored).

    Per pair: |g_a - g_b|^2 = sq_a + sq_b - 2 dot estimates tr(Sigma)(1/B_a + 1/B_b) and
    the dot estimates |G|^2 (the weights moving between the two pushes bias both slightly;
    a small learning rate keeps that small). None when fewer than two pairs."""
    b = np.asarray(batches, dtype=np.float64)
    s = np.asarray(sq, dtype=np.float64)
    d = np.asarray(dot_prev, dtype=np.float64)
    if len(b) < 3:
        return None
    diff_sq = s[:-1] + s[1:] - 2.0 * d[1:]
    tr = diff_sq / (1.0 / b[:-1] + 1.0 / b[1:])
    g2 = d[1:] + (tr / population if population else 0.0)
    ratio, se = ratio_of_means(tr, g2, blocks)
    return NoiseEstimate("differenced", ratio, float(np.mean(g2)), float(np.mean(tr)), se, len(g2))
