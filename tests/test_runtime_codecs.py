"""Codecs and the PS's merge rules, checked exactly (no processes)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from hybridps.spec import Compression, compressed_bytes, topk_count  # noqa: E402
from runtime.codecs import Codec, ErrorFeedback  # noqa: E402
from runtime.merge import merge_async, merge_sync, weighted_gradient  # noqa: E402

KINDS = [
    Compression(kind="none"),
    Compression(kind="topk", ratio=0.05),
    Compression(kind="randomk", ratio=0.1),
    Compression(kind="onebit"),
    Compression(kind="onebit", scaling=False),
    Compression(kind="dithering", levels=1),
    Compression(kind="dithering", levels=7),
    Compression(kind="dithering", levels=15, normalize="l2"),
]


@pytest.mark.parametrize("c", KINDS, ids=lambda c: f"{c.kind}-{c.ratio or c.levels or c.scaling}")
@pytest.mark.parametrize("n", [1, 7, 8, 1001, 4096])
def test_bytes_equal_the_design_formulas(c, n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    codec = Codec(c, n, seed=1)
    payload = codec.encode(x)
    assert payload.dtype == torch.uint8
    assert payload.numel() == compressed_bytes(c, n)
    assert codec.decode(payload).shape == (n,)


def test_topk_keeps_the_k_largest_magnitudes_exactly():
    n = 1000
    x = torch.randn(n, generator=torch.Generator().manual_seed(3))
    c = Compression(kind="topk", ratio=0.03)
    k = topk_count(0.03, n)
    y = Codec(c, n).decode(Codec(c, n).encode(x))
    kept = torch.nonzero(y).reshape(-1)
    assert len(kept) == k == 30
    expected = torch.topk(x.abs(), k).indices
    assert set(kept.tolist()) == set(expected.tolist())
    assert torch.equal(y[kept], x[kept])  # values bit-exact


def test_randomk_is_seeded_and_keeps_exact_values():
    n = 500
    x = torch.randn(n)
    c = Compression(kind="randomk", ratio=0.1)
    a, b = Codec(c, n, seed=5).encode(x), Codec(c, n, seed=5).encode(x)
    assert torch.equal(a, b)
    y = Codec(c, n).decode(a)
    kept = torch.nonzero(y).reshape(-1)
    assert len(kept) == 50 and torch.equal(y[kept], x[kept])


def test_onebit_keeps_signs_and_the_scale():
    x = torch.tensor([0.5, -2.0, 3.0, -0.25, 1.0, 0.0, -7.0, 2.0, 4.0])
    y = Codec(Compression(kind="onebit"), 9).decode(Codec(Compression(kind="onebit"), 9).encode(x))
    scale = float(x.abs().mean())
    assert torch.allclose(y.abs(), torch.full((9,), scale))
    assert torch.equal(y < 0, x < 0)
    y1 = Codec(Compression(kind="onebit", scaling=False), 9).decode(
        Codec(Compression(kind="onebit", scaling=False), 9).encode(x))
    assert torch.equal(y1, torch.where(x < 0, -1.0, 1.0))


def test_dithering_is_unbiased_and_on_the_level_grid():
    n, levels = 64, 3
    x = torch.randn(n, generator=torch.Generator().manual_seed(0))
    c = Compression(kind="dithering", levels=levels)
    codec = Codec(c, n, seed=2)
    norm = float(x.abs().max())
    outs = torch.stack([codec.decode(codec.encode(x)) for _ in range(2000)])
    grid = outs.abs() / norm * levels
    assert torch.allclose(grid, grid.round(), atol=1e-4)  # values are multiples of norm/levels
    assert torch.equal((outs[0] < 0) & (outs[0] != 0), (x < 0) & (outs[0] != 0))
    assert torch.allclose(outs.mean(0), x, atol=0.08)  # stochastic rounding is unbiased


def test_error_feedback_carries_the_residual_into_the_next_push():
    n = 10
    c = Compression(kind="topk", ratio=0.1)  # keeps 1 element
    ef = ErrorFeedback(c, n)
    x1 = torch.tensor([5.0, 1, 1, 1, 1, 1, 1, 1, 1, 0.5])
    p1 = ef.codec.decode(ef.encode(x1))
    assert torch.equal(p1, torch.tensor([5.0] + [0.0] * 9))
    assert torch.equal(ef.residual, x1 - p1)
    x2 = torch.zeros(n)
    x2[9] = 0.6  # alone it would lose to the residual's ones
    p2 = ef.codec.decode(ef.encode(x2))
    corrected = (x1 - p1) + x2  # the residual is added before compressing
    assert torch.equal(p2, torch.where(torch.arange(n) == 9, corrected, torch.zeros(n)))
    assert torch.allclose(ef.residual, corrected - p2)
    # without error feedback nothing is carried
    plain = ErrorFeedback(Compression(kind="topk", ratio=0.1, error_feedback=False), n)
    plain.encode(x1)
    assert plain.residual is None
    assert torch.equal(plain.codec.decode(plain.encode(x2)), x2)


def test_model_exchange_merge_rules_are_exact():
    w = torch.tensor([1.0, 2.0, -4.0])
    wi = torch.tensor([3.0, 0.0, 4.0])
    # asp (DBSL): alpha = 10625 / 13125; w <- (w + alpha w_i) / (1 + alpha)
    alpha = 10625 / 13125
    got = merge_async(w, wi, 10625, 13125)
    assert torch.allclose(got, (w + alpha * wi) / (1 + alpha), rtol=0, atol=1e-7)
    assert torch.equal(merge_async(w, wi, 500, 500), (w + wi) / 2)  # equal shares: the mean
    # bsp: samples-weighted average
    got = merge_sync([(100, torch.tensor([1.0, 1.0])), (300, torch.tensor([5.0, -3.0]))])
    assert torch.equal(got, torch.tensor([4.0, -2.0]))
    # gradients: the batch-weighted mean of per-sample means is the union's mean
    g = weighted_gradient([(2, torch.tensor([1.0])), (6, torch.tensor([3.0]))])
    assert torch.equal(g, torch.tensor([2.5]))
    assert math.isclose(float(g), (2 * 1 + 6 * 3) / 8)
