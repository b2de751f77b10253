"""
EFL (and EQFL) on CUDA as Triton kernels that read a dense head's logits where they lie.

Dense logits are given per level as (N, A*C, H, W) tensors, row (anchor) order (y, x, anchor) within an image,
as detectron2 orders anchors; a plain (R, C) matrix is the one-level case (1, C, R, 1). A program covers
BLOCK_C classes of one anchor slot over ITERS * BLOCK_P positions, so one pass reads each logit once:
- forward: the loss only (per-program partial sums, added up on the host side: deterministic, no atomics);
- backward: recomputes each cell, writes grad_output * dL/dz in the logits' dtype, and sums |dL/dz| per class
  over positive and negative cells into per-program rows that are reduced afterwards.
Arithmetic is float32 whatever the logits' dtype.

The tile shape (BLOCK_C, BLOCK_P, ITERS, warps) is chosen by measurement: triton.autotune times every entry of
CONFIGS the first time it meets a (C, layout, positions rounded up to a power of 2, gradient or not, variant,
dtype), and keeps the fastest (benchmarks/sweep_triton_blocks.py prints the whole table). The per-program
partial sums are sized for the smallest tiles and zeroed, so that every configuration fills a part of the same
buffers; under Triton's interpreter, which cannot time anything, the first entry is used.
"""
import os
from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .targets import DenseTargets

__all__ = ["CONFIGS", "TritonKernel", "efl_loss_triton", "efl_grad_triton"]


@triton.jit
def _log1p(e):
    """log(1 + e) for e in [0, 1], accurate where 1 + e rounds to 1."""
    u = 1.0 + e
    return tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))


@triton.jit
def _efl_cells(x, pos, gamma, w_pos, w_neg):
    """
    Loss and dL/dz of each cell. With z_t = z for a positive cell and -z for a negative one:
    loss = w (1 - p_t)^gamma (-log p_t), |dL/dz| = w (1 - p_t)^gamma (gamma p_t (-log p_t) + 1 - p_t),
    where (1 - p_t)^gamma = exp(-gamma softplus(z_t)); exp(-|z_t|) is the only exponential of z needed.
    """
    zt = tl.where(pos, x, -x)
    e = tl.exp(-tl.abs(zt))
    l = _log1p(e)
    nlog_pt = l + tl.maximum(-zt, 0.0)
    nlog_qt = l + tl.maximum(zt, 0.0)
    r = 1.0 / (1.0 + e)
    non_negative = zt >= 0
    p_t = tl.where(non_negative, r, e * r)
    q_t = tl.where(non_negative, e * r, r)
    coef = tl.where(pos, w_pos, w_neg) * tl.exp(-gamma * nlog_qt)
    magnitude = coef * (gamma * p_t * nlog_pt + q_t)
    return coef * nlog_pt, tl.where(pos, -magnitude, magnitude)


@triton.jit
def _eqfl_positive_cells(x, t, gamma, w):
    """EQFL's positive cells: loss w |t - p|^gamma BCE(z, t) and its dL/dz."""
    e = tl.exp(-tl.abs(x))
    r = 1.0 / (1.0 + e)
    p = tl.where(x >= 0, r, e * r)
    bce = _log1p(e) + tl.maximum(x, 0.0) - t * x
    d = p - t
    ad = tl.abs(d)
    log_ad = tl.log(ad)
    modulator = tl.exp(gamma * log_ad)
    # d|t - p|^gamma / dp, written to stay finite where p = t
    slope = tl.where(ad > 0, gamma * tl.exp((gamma - 1.0) * log_ad) * tl.where(d > 0, 1.0, -1.0), 0.0)
    return w * modulator * bce, w * (slope * p * (1.0 - p) * bce + modulator * d)


CONFIGS = [
    triton.Config({"BLOCK_C": 32, "BLOCK_P": 64, "ITERS": 4}, num_warps=4),
    triton.Config({"BLOCK_C": 64, "BLOCK_P": 32, "ITERS": 4}, num_warps=4),
    triton.Config({"BLOCK_C": 64, "BLOCK_P": 64, "ITERS": 2}, num_warps=4),
    triton.Config({"BLOCK_C": 16, "BLOCK_P": 128, "ITERS": 4}, num_warps=4),
    triton.Config({"BLOCK_C": 32, "BLOCK_P": 128, "ITERS": 2}, num_warps=8),
    triton.Config({"BLOCK_C": 128, "BLOCK_P": 32, "ITERS": 2}, num_warps=8),
]
# The partial-sum buffers hold as many rows and columns as the smallest tiles need.
_MIN_SPAN = min(c.kwargs["BLOCK_P"] * c.kwargs["ITERS"] for c in CONFIGS)
_MIN_BLOCK_C = min(c.kwargs["BLOCK_C"] for c in CONFIGS)
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.autotune(
    configs=CONFIGS[:1] if _INTERPRETED else CONFIGS,
    key=["C", "P_BUCKET", "stride_xp", "WITH_GRAD", "QUALITY"],  # and every tensor's dtype
    reset_to_zero=["loss_part_ptr", "pos_part_ptr", "neg_part_ptr"],
)
@triton.jit
def _efl_kernel(
    x_ptr,
    grad_ptr,
    labels_ptr,
    quality_ptr,
    gamma_ptr,
    w_pos_ptr,
    w_neg_ptr,
    grad_out_ptr,
    loss_part_ptr,
    pos_part_ptr,
    neg_part_ptr,
    C,
    P,
    P_BUCKET,  # P rounded up to a power of 2: only part of the autotuning key
    A,
    stride_xn,
    stride_xc,
    stride_xp,
    stride_ln,
    label_offset,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    ITERS: tl.constexpr,
    WITH_GRAD: tl.constexpr,
    QUALITY: tl.constexpr,
):
    pid_row = tl.program_id(0)
    pid_c = tl.program_id(1)
    num_p_blocks = tl.cdiv(P, BLOCK_P * ITERS)
    slot = pid_row // num_p_blocks  # (image, anchor) pair
    p_block = pid_row % num_p_blocks
    n = (slot // A).to(tl.int64)
    a = slot % A

    cls = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cls_in = cls < C
    gamma = tl.load(gamma_ptr + cls, mask=cls_in, other=1.0)[:, None]
    w_pos = tl.load(w_pos_ptr + cls, mask=cls_in, other=0.0)[:, None]
    w_neg = tl.load(w_neg_ptr + cls, mask=cls_in, other=0.0)[:, None]
    row_offsets = n * stride_xn + (a * C + cls).to(tl.int64)[:, None] * stride_xc
    if WITH_GRAD:
        grad_out = tl.load(grad_out_ptr).to(tl.float32)

    loss_acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    pos_acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    neg_acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    for it in range(ITERS):
        p = (p_block * ITERS + it) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_in = p < P
        anchor = n * stride_ln + label_offset + p * A + a
        label = tl.load(labels_ptr + anchor, mask=p_in, other=-1)
        in_bounds = cls_in[:, None] & p_in[None, :]
        valid = in_bounds & (label >= 0)[None, :]
        pos = label[None, :] == cls[:, None]
        offsets = row_offsets + p.to(tl.int64)[None, :] * stride_xp
        x = tl.load(x_ptr + offsets, mask=in_bounds, other=0.0).to(tl.float32)
        loss, grad = _efl_cells(x, pos, gamma, w_pos, w_neg)
        if QUALITY:
            target = tl.load(quality_ptr + anchor, mask=p_in, other=0.0)[None, :]
            loss_q, grad_q = _eqfl_positive_cells(x, target, gamma, w_pos)
            loss = tl.where(pos, loss_q, loss)
            grad = tl.where(pos, grad_q, grad)
        loss_acc += tl.where(valid, loss, 0.0)
        if WITH_GRAD:
            grad = tl.where(valid, grad, 0.0)
            magnitude = tl.abs(grad)
            pos_acc += tl.where(pos, magnitude, 0.0)
            neg_acc += tl.where(pos, 0.0, magnitude)
            tl.store(grad_ptr + offsets, (grad * grad_out).to(grad_ptr.dtype.element_ty), mask=in_bounds)

    num_c_blocks = tl.num_programs(1)
    tl.store(loss_part_ptr + pid_row * num_c_blocks + pid_c, tl.sum(tl.sum(loss_acc, axis=1), axis=0))
    if WITH_GRAD:
        tl.store(pos_part_ptr + pid_row * C + cls, tl.sum(pos_acc, axis=1), mask=cls_in)
        tl.store(neg_part_ptr + pid_row * C + cls, tl.sum(neg_acc, axis=1), mask=cls_in)


def _position_stride(x: Tensor) -> int:
    """The stride of the flattened (H*W) axis of an (N, A*C, H, W) tensor."""
    _, _, h, w = x.shape
    if w == 1:
        return x.stride(2)
    if h == 1 or x.stride(2) == w * x.stride(3):
        return x.stride(3)
    raise ValueError("EFL's Triton path needs each level's (H, W) axes to flatten (contiguous or channels-last)")


def _launch(
    levels: Sequence[Tensor],
    grads: Optional[Sequence[Tensor]],
    targets: DenseTargets,
    grad_output: Optional[Tensor],
    config: Optional[triton.Config] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """One kernel launch per level; ``config`` forces a tile shape (the sweep), else autotuning picks it."""
    labels, quality, gamma, w_pos, w_neg, num_anchors = targets
    num_classes = gamma.numel()
    device = gamma.device
    with_grad = grads is not None
    kernel = _efl_kernel if config is None else _efl_kernel.fn
    meta = {} if config is None else config.all_kwargs()
    losses: List[Tensor] = []
    pos_sum = torch.zeros(num_classes, dtype=torch.float32, device=device)
    neg_sum = torch.zeros(num_classes, dtype=torch.float32, device=device)
    label_offset = 0
    for i, x in enumerate(levels):
        n, _, h, w = x.shape
        positions = h * w
        slots = n * num_anchors
        stride_p = _position_stride(x)
        rows = slots * triton.cdiv(positions, _MIN_SPAN)

        def grid(meta, slots=slots, positions=positions):
            p_blocks = triton.cdiv(positions, meta["BLOCK_P"] * meta["ITERS"])
            return slots * p_blocks, triton.cdiv(num_classes, meta["BLOCK_C"])

        loss_part = torch.zeros(rows * triton.cdiv(num_classes, _MIN_BLOCK_C), dtype=torch.float32, device=device)
        if with_grad:
            pos_part = torch.zeros(rows, num_classes, dtype=torch.float32, device=device)
            neg_part = torch.zeros_like(pos_part)
            grad = grads[i]
        else:
            pos_part = neg_part = loss_part
            grad = x
        if rows > 0:
            kernel[grid](
                x, grad, labels, gamma if quality is None else quality, gamma, w_pos, w_neg,
                grad_output if with_grad else gamma,
                loss_part, pos_part, neg_part,
                num_classes, positions, triton.next_power_of_2(positions), num_anchors,
                x.stride(0), x.stride(1), stride_p, labels.stride(0), label_offset,
                WITH_GRAD=with_grad, QUALITY=quality is not None, **meta,
            )  # fmt: skip
            losses.append(loss_part.sum())
            if with_grad:
                pos_sum += pos_part.sum(dim=0)
                neg_sum += neg_part.sum(dim=0)
        label_offset += positions * num_anchors
    loss = torch.stack(losses).sum() if losses else gamma.new_zeros(())
    return loss, pos_sum, neg_sum


def efl_loss_triton(
    levels: Sequence[Tensor], targets: DenseTargets, config: Optional[triton.Config] = None
) -> Tensor:
    """
    Args:
        levels: per-level (N, A*C, H, W) logits (a plain (R, C) matrix as its (1, C, R, 1) view).
        targets: labels, quality, focusing factors and weights (see :class:`DenseTargets`).
        config: an entry of CONFIGS to use instead of the autotuner's choice.

    Returns:
        Scalar float32 loss.
    """
    return _launch(levels, None, targets, None, config)[0]


def efl_grad_triton(
    levels: Sequence[Tensor],
    targets: DenseTargets,
    grad_output: Tensor,
    config: Optional[triton.Config] = None,
) -> Tuple[List[Tensor], Tensor, Tensor]:
    """
    Same arguments as :func:`efl_loss_triton` plus the scalar ``grad_output``.

    Returns:
        grad_output * dL/dlogits per level (same shapes, strides and dtypes as ``levels``), and the (C,)
        sums of |dL/dz| over positive and over negative cells (unscaled by ``grad_output``).
    """
    grads = [torch.empty_like(x) for x in levels]
    _, pos_sum, neg_sum = _launch(levels, grads, targets, grad_output.reshape(1), config)
    return grads, pos_sum, neg_sum


class TritonKernel:
    """
    The Triton path as a :class:`efl.losses.function.DenseKernel`: forward reads the logits once for the loss,
    backward reads them again and writes the gradient and the statistics; nothing (anchors x classes) is kept
    in between.
    """

    name = "triton"

    def forward(self, ctx, levels: Sequence[Tensor], targets: DenseTargets, want_grad: bool) -> Tensor:
        if want_grad:
            ctx.targets = targets
            ctx.save_for_backward(*levels)
        return efl_loss_triton(levels, targets)

    def backward(self, ctx, grad_output: Tensor) -> Tuple[List[Tensor], Tensor, Tensor]:
        return efl_grad_triton(ctx.saved_tensors, ctx.targets, grad_output)
