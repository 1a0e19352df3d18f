"""The gradient noise scale estimators (traces.noise_scale) on a problem whose answer is
known exactly, and the PS's estimate in a real bsp run against a single-process one."""

from __future__ import annotations

import numpy as np
import pytest

from traces.noise_scale import differenced, ratio_of_means, two_batch

# Linear regression y = x.w* + eps, x ~ N(0, I_d), eps ~ N(0, s^2), per-sample loss
# (x.w - y)^2 / 2 at fixed w, r = w - w*: g = x (x.r - eps), so G = r and, by the Gaussian
# fourth moment E[x x^T (x.r)^2] = |r|^2 I + 2 r r^T, Sigma = (|r|^2 + s^2) I + r r^T:
# tr(Sigma) = (d + 1)|r|^2 + d s^2.
D, NOISE_SD = 20, 0.5


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    r = rng.standard_normal(D) * 0.3
    g2 = float(r @ r)
    tr = (D + 1) * g2 + D * NOISE_SD ** 2
    return rng, r, g2, tr


def _batch_gradient(rng, r, b):
    x = rng.standard_normal((b, D))
    eps = rng.standard_normal(b) * NOISE_SD
    return (x * (x @ r - eps)[:, None]).mean(0)


def test_two_batch_recovers_a_known_noise_scale_with_unequal_batches():
    rng, r, g2, tr = _problem()
    batches = [8, 16, 40]  # unequal: the harmonic-mean rule must hold
    rb, rs, rbig = [], [], []
    for _ in range(3000):
        gs = [_batch_gradient(rng, r, b) for b in batches]
        big = sum(b * g for b, g in zip(batches, gs)) / sum(batches)
        rb.append(batches)
        rs.append([float(g @ g) for g in gs])
        rbig.append(float(big @ big))
    est = two_batch(rb, rs, rbig)
    assert est.estimator == "two-batch" and est.rounds == 3000
    assert est.grad_sq == pytest.approx(g2, rel=0.10)
    assert est.trace_cov == pytest.approx(tr, rel=0.10)
    assert est.noise_scale == pytest.approx(tr / g2, rel=0.10)
    assert est.batch_big == 64 and est.batch_small == pytest.approx(3 / (1 / 8 + 1 / 16 + 1 / 40))
    # the reported standard error is honest: the truth lies within 3 of them
    assert abs(est.noise_scale - tr / g2) < 3 * est.stderr
    assert 0 < est.stderr < 0.1 * est.noise_scale


def test_differenced_recovers_a_known_noise_scale():
    rng, r, g2, tr = _problem(1)
    batches = rng.choice([16, 32, 48], size=4000)
    gs = [_batch_gradient(rng, r, int(b)) for b in batches]
    sq = [float(g @ g) for g in gs]
    dots = [0.0] + [float(a @ b) for a, b in zip(gs[:-1], gs[1:])]
    est = differenced(batches, sq, dots)
    assert est.estimator == "differenced" and est.rounds == 3999
    assert est.grad_sq == pytest.approx(g2, rel=0.10)
    assert est.trace_cov == pytest.approx(tr, rel=0.10)
    assert est.noise_scale == pytest.approx(tr / g2, rel=0.10)
    assert abs(est.noise_scale - tr / g2) < 3 * est.stderr


def test_too_few_rounds_or_single_worker_rounds_give_no_estimate():
    assert two_batch([[32, 32]], [[1.0, 1.1]], [0.9]) is None
    assert two_batch([[32]] * 5, [[1.0]] * 5, [1.0] * 5) is None  # one worker: no big batch
    assert differenced([32, 32], [1.0, 1.0], [0.0, 0.5]) is None


def test_ratio_of_means_jackknife_matches_the_delta_method_on_iid_rounds():
    rng = np.random.default_rng(3)
    den = 2.0 + rng.standard_normal(4000) * 0.5
    num = 10.0 + rng.standard_normal(4000) * 2.0
    ratio, se = ratio_of_means(num, den, blocks=40)
    assert ratio == pytest.approx(num.mean() / den.mean())
    # delta method for independent num, den: var(R) = (var_n/m_d^2 + m_n^2 var_d/m_d^4) / n
    delta = np.sqrt((4.0 / 4.0 + 100.0 * 0.25 / 16.0) / 4000)
    assert se == pytest.approx(delta, rel=0.35)
    assert np.isnan(ratio_of_means(np.ones(3), -np.ones(3))[0])  # |G|^2 not resolved


def test_two_batch_and_differenced_correct_for_sampling_without_replacement():
    # the runtime's setting: a finite set of N per-sample gradients, each epoch a
    # permutation cut into disjoint batches. Truth: |mean|^2 and the sample covariance.
    rng, r, _, _ = _problem(2)
    n = 600
    x = rng.standard_normal((n, D))
    per_sample = x * (x @ r - rng.standard_normal(n) * NOISE_SD)[:, None]
    mean = per_sample.mean(0)
    g2 = float(mean @ mean)
    tr = float(((per_sample - mean) ** 2).sum()) / (n - 1)
    rb, rs, rbig, seq_b, seq_sq, seq_dot, prev = [], [], [], [], [], [], None
    for _ in range(400):
        perm = rng.permutation(n)
        for k in range(0, n - 96 + 1, 96):  # rounds of 3 workers x 32
            gs = [per_sample[perm[k + 32 * i: k + 32 * (i + 1)]].mean(0) for i in range(3)]
            big = sum(gs) / 3
            rb.append([32, 32, 32])
            rs.append([float(g @ g) for g in gs])
            rbig.append(float(big @ big))
            for g in gs:  # the same pushes in arrival order (differenced)
                seq_b.append(32)
                seq_sq.append(float(g @ g))
                seq_dot.append(0.0 if prev is None else float(g @ prev))
                prev = g
    est = two_batch(rb, rs, rbig, population=n)
    assert est.grad_sq == pytest.approx(g2, rel=0.10) and est.trace_cov == pytest.approx(tr, rel=0.10)
    assert est.noise_scale == pytest.approx(tr / g2, rel=0.10)
    naive = two_batch(rb, rs, rbig)  # as if the draws were independent: |G|^2 biased low by S/(N-1)
    assert naive.grad_sq == pytest.approx(g2 - tr / (n - 1), rel=0.10)
    est = differenced(seq_b, seq_sq, seq_dot, population=n)
    assert est.noise_scale == pytest.approx(tr / g2, rel=0.10)


# ----------------------------------------------------------------------------- the runtime

WORKERS3 = [("w0", 96, 479), ("w1", 96, 479), ("w2", 96, 479)]  # digits: 1,437 = 3 x 479


@pytest.mark.slow
@pytest.mark.torch
def test_ps_noise_scale_of_a_3_worker_bsp_run_matches_the_per_sample_one(tmp_path):
    """1 PS + 3 workers, cnn on digits, bsp: the PS's two-batch estimate over 100 rounds
    agrees with the exact per-sample noise scale at the same weights within 20%. The lr is
    tiny (1e-4, no momentum) so the weights stay where the reference is taken (the final
    checkpoint); with moving weights a phase's estimate averages over its trajectory."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from runtime.server import load_checkpoint
    from runtime.testing import per_sample_noise_scale, run_cli, spec_args, write_specs
    from traces.jsonl import read_trace

    write_specs(tmp_path, WORKERS3, epochs=20, lr=1e-4, momentum=0.0, weight_decay=0.0, model="cnn", data="digits")
    out = tmp_path / "out"
    r = run_cli(["run", *spec_args(tmp_path), "--out", out, "--local", "--eval-every", "0", "--worker-timeout", "60"],
                timeout_s=300)
    assert r.returncode == 0, r.stderr
    tr = read_trace(out / "trace.jsonl")
    (noise,) = tr.of_kind("noise")
    assert noise["estimator"] == "two-batch" and noise["phase"] == 0 and noise["rounds"] == 100
    assert noise["batch_big"] == pytest.approx(3 * 479 / 5) and noise["batch_small"] == pytest.approx(479 / 5)
    ref = per_sample_noise_scale(load_checkpoint(out / "checkpoint.pt")["params"])
    print("PS", noise, "per-sample", ref)
    assert noise["noise_scale"] == pytest.approx(ref["noise_scale"], rel=0.20)
    assert noise["grad_sq"] == pytest.approx(ref["grad_sq"], rel=0.20)
    assert noise["trace_cov"] == pytest.approx(ref["trace_cov"], rel=0.20)
    assert noise["stderr"] < 0.2 * noise["noise_scale"]
    # train records: one per push, the interval's mean loss; at init on 10 classes ~ ln 10
    train = tr.of_kind("train")
    assert len(train) == len(tr.of_kind("push")) == 300
    assert sum(t["samples"] for t in train) == 20 * 1437
    assert all(2.0 < t["loss"] < 2.6 for t in train)
