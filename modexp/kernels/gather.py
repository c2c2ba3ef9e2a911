"""The routed layer's top-k gather, x.index_select(0, rows) for DISTINCT rows.

index_select's backward accumulates (index_add, via scatter_add on the CPU, single-threaded);
top-k rows are distinct, so writing the gradients into zeros with index_copy does the same.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _GatherRows(torch.autograd.Function):
    """x.index_select(0, rows) for distinct rows; backward: the grads copied into zeros."""

    @staticmethod
    def forward(ctx, x: Tensor, rows: Tensor) -> Tensor:
        ctx.save_for_backward(rows)
        ctx.shape = x.shape
        return x.index_select(0, rows)

    @staticmethod
    def backward(ctx, g: Tensor):
        (rows,) = ctx.saved_tensors
        return g.new_zeros(ctx.shape).index_copy_(0, rows, g), None


def gather_rows(x: Tensor, rows: Tensor) -> Tensor:
    """Rows `rows` (n,) of x (N, d), all distinct: (n, d)."""
    return _GatherRows.apply(x, rows) if x.requires_grad else x.index_select(0, rows)
