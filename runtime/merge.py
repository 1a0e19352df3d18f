"""The PS's update rules (DESIGN.md, docs/semantics.md), as pure functions on flat
tensors so they can be checked exactly."""

from __future__ import annotations

import torch


def weighted_gradient(items: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """Batch-weighted average of per-sample-mean gradients: sum(n_i g_i) / sum(n_i),
    i.e. the mean gradient over the union of the batches."""
    if len(items) == 1:
        return items[0][1]
    total = sum(n for n, _ in items)
    return sum(n * g for n, g in items) / total


def merge_sync(items: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """bsp model exchange: the samples-weighted average of the pushed models."""
    total = sum(n for n, _ in items)
    return sum(n * w for n, w in items) / total


def merge_async(w: torch.Tensor, w_i: torch.Tensor, share_i: int, max_share: int) -> torch.Tensor:
    """asp/ssp model exchange (DBSL): w <- (w + a*w_i)/(1 + a), a = d_i / max_j d_j."""
    alpha = share_i / max_share
    return (w + alpha * w_i) / (1 + alpha)
