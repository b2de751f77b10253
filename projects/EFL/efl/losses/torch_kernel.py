"""
EFL (and EQFL) in chunked PyTorch: the code path for the CPU (and for CUDA without Triton).

One pass computes the loss, and when asked the gradient and the per-class sums of |gradient|, block by block,
so the float32 temporaries stay a few MB whatever the number of anchors. Every cell is first treated as a
negative, densely; the one positive cell of each foreground anchor is then corrected through indices, so no
one-hot target is built, and no value is read back to the host (no GPU sync). Inputs are a dense head's
per-level (N, A*C, H, W) logits, read in place.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .targets import DenseTargets

__all__ = ["ChunkedTorchKernel", "efl_torch"]

# Cells per block: bounds every float32 temporary to 4 MB.
CHUNK_CELLS = 1 << 20


def _positive_cells(
    x: Tensor, gamma: Tensor, w: Tensor, target: Optional[Tensor]
) -> Tuple[Tensor, Tensor]:
    """
    Loss and dL/dz of positive cells, all shaped alike.

    target None (EFL): w (1 - p)^gamma (-log p), with -log p = softplus(-z).
    target t (EQFL): w |t - p|^gamma BCE(z, t), with BCE(z, t) = softplus(z) - t z.
    """
    if target is None:
        q = torch.sigmoid(-x)
        nlog_p = F.softplus(-x)
        f = q.pow(gamma).mul_(w)
        return f * nlog_p, -f * (gamma * (1.0 - q) * nlog_p + q)
    p = torch.sigmoid(x)
    d = p - target
    ad = d.abs()
    bce = F.softplus(x) - target * x
    modulator = ad.pow(gamma)
    # d|t - p|^gamma / dp, written to stay finite where p = t
    slope = torch.where(ad > 0, gamma * ad.pow(gamma - 1.0) * d.sign(), torch.zeros_like(ad))
    return w * modulator * bce, w * (slope * p * (1.0 - p) * bce + modulator * d)


def _efl_block(
    x: Tensor,
    labels: Tensor,
    quality: Optional[Tensor],
    gamma: Tensor,
    w_pos: Tensor,
    w_neg: Tensor,
    want_grad: bool,
) -> Tuple[Tensor, Optional[Tensor], Tensor, Tensor]:
    """
    Args:
        x: (B, C, P) float32 logits: B (image, anchor) slots, C classes, P positions.
        labels: (B, P) int labels in [-1, C].
        quality: (B, P) float soft targets of the positive cells (EQFL), or None (EFL: target 1).
        gamma, w_pos, w_neg: (C, 1) focusing factors and weights (alpha_t * gamma_j / gamma_b / normalizer).

    Returns:
        loss (scalar), grad (B, C, P) or None, pos_sum (C,), neg_sum (C,).
    """
    num_classes = x.shape[1]
    # Each anchor's own class is reached by gather/scatter on (B, 1, P) indices with masks, not by indexing the
    # positives found with nonzero(), which costs a GPU a host sync per block.
    valid = labels >= 0
    fg = valid & (labels < num_classes)
    own = labels.clamp(0, num_classes - 1)  # (B, P): the class of a foreground anchor, any class for the others
    index = own[:, None, :]

    # Negative cells: w p^gamma * (-log(1 - p)), with -log(1 - p) = softplus(z).
    prob = torch.sigmoid(x)
    nlog_q = F.softplus(x)
    t = prob.pow(gamma).mul_(w_neg)
    cell = t * nlog_q
    own_cell = cell.gather(1, index).squeeze(1)
    loss = cell.sum(dim=1).mul_(valid).sum() - torch.where(fg, own_cell, 0.0).sum()

    loss_pos, grad_pos = _positive_cells(
        x.gather(1, index).squeeze(1), gamma.view(-1)[own], w_pos.view(-1)[own], quality
    )  # (B, P)
    loss = loss + torch.where(fg, loss_pos, 0.0).sum()

    pos_sum = x.new_zeros(num_classes)
    neg_sum = x.new_zeros(num_classes)
    if not want_grad:
        return loss, None, pos_sum, neg_sum

    # d/dz of a negative term: w p^gamma (gamma (1 - p) softplus(z) + p), always >= 0.
    grad = torch.neg(prob, out=cell).add_(1.0).mul_(nlog_q).mul_(gamma).add_(prob).mul_(t)
    grad.masked_fill_(~valid[:, None, :], 0.0)
    neg_sum += grad.sum(dim=(0, 2))
    own_grad = grad.gather(1, index).squeeze(1)
    neg_sum.index_add_(0, own.flatten(), torch.where(fg, own_grad, 0.0).flatten(), alpha=-1.0)
    grad.scatter_(1, index, torch.where(fg, grad_pos, own_grad)[:, None, :])
    pos_sum.index_add_(0, own.flatten(), torch.where(fg, grad_pos.abs(), 0.0).flatten())
    return loss, grad, pos_sum, neg_sum


def level_labels(labels: Tensor, offset: int, positions: int, num_anchors: int) -> Tensor:
    """(N, R) per-anchor values in (position, anchor) order -> the (N*A, P) values of one level's slots."""
    n = labels.shape[0]
    block = labels[:, offset : offset + positions * num_anchors]
    return block.reshape(n, positions, num_anchors).transpose(1, 2).reshape(n * num_anchors, positions)


def efl_torch(
    levels: Sequence[Tensor], targets: DenseTargets, want_grad: bool
) -> Tuple[Tensor, Optional[List[Tensor]], Tensor, Tensor]:
    """
    Args:
        levels: per-level (N, A*C, H, W) logits (a plain (R, C) matrix as its (1, C, R, 1) view), any float dtype.
        targets: labels, quality, focusing factors and weights (see :class:`DenseTargets`).
        want_grad: also compute dL/dlogits (per level, in the logits' dtype and layout) and the statistics.

    Returns:
        loss (scalar float32), grads or None, pos_sum (C,), neg_sum (C,).
    """
    labels, quality, gamma, w_pos, w_neg, num_anchors = targets
    num_classes = gamma.numel()
    gamma, w_pos, w_neg = (v.view(-1, 1) for v in (gamma, w_pos, w_neg))
    loss = gamma.new_zeros(())
    pos_sum = gamma.new_zeros(num_classes)
    neg_sum = gamma.new_zeros(num_classes)
    grads = [] if want_grad else None
    offset = 0
    for x in levels:
        n, _, h, w = x.shape
        positions = h * w
        slots = n * num_anchors
        xv = x.reshape(slots, num_classes, positions)
        lab = level_labels(labels, offset, positions, num_anchors)
        qual = None if quality is None else level_labels(quality, offset, positions, num_anchors)
        offset += positions * num_anchors
        if want_grad:
            grad = torch.empty_like(x)
            gv = grad.view(slots, num_classes, positions)
        p_step = max(1, min(positions, CHUNK_CELLS // num_classes))
        s_step = max(1, CHUNK_CELLS // (num_classes * p_step))
        for s0 in range(0, slots, s_step):
            for p0 in range(0, positions, p_step):
                s, p = slice(s0, s0 + s_step), slice(p0, p0 + p_step)
                q = None if qual is None else qual[s, p]
                block = _efl_block(xv[s, :, p].float(), lab[s, p], q, gamma, w_pos, w_neg, want_grad)
                loss += block[0]
                if want_grad:
                    gv[s, :, p] = block[1]
                    pos_sum += block[2]
                    neg_sum += block[3]
        if want_grad:
            grads.append(grad)
    return loss, grads, pos_sum, neg_sum


class ChunkedTorchKernel:
    """
    The chunked PyTorch path as a :class:`efl.losses.function.DenseKernel`. Forward computes loss, gradient and
    statistics together (on the CPU a second pass would cost as much again); backward scales the kept gradient.
    """

    name = "torch"

    def forward(self, ctx, levels: Sequence[Tensor], targets: DenseTargets, want_grad: bool) -> Tensor:
        loss, grads, pos_sum, neg_sum = efl_torch(levels, targets, want_grad)
        ctx.grads = grads
        ctx.statistics = (pos_sum, neg_sum)
        return loss

    def backward(self, ctx, grad_output: Tensor) -> Tuple[List[Tensor], Tensor, Tensor]:
        grads = ctx.grads
        if grads is None:
            raise RuntimeError(
                "EqualizedFocalLoss: backward ran twice through the same call (retain_graph); its gradient "
                "buffer is handed over on the first backward. Call the loss again instead."
            )
        ctx.grads = None
        for grad in grads:
            grad.mul_(grad_output)
        return grads, *ctx.statistics
