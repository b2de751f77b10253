"""
Equalized Focal Loss (Li et al., "Equalized Focal Loss for Dense Long-Tailed Object Detection", CVPR 2022)
and the per-class gradient statistics that drive it.

For the cell (anchor i, class j) with logit z, p = sigmoid(z), target y = [label_i == j] and
p_t = p if y else 1 - p:

    EFL(i, j) = alpha_t * (gamma_j / gamma_b) * (1 - p_t) ** gamma_j * (-log p_t)
    gamma_j   = gamma_b + scale * (1 - g_j)

g_j (the buffer ``pos_neg``) is the ratio of the gradient magnitude class j has received on its positive cells
to the magnitude it has received on its negative cells, accumulated since training began. A class that sees
few positives has a small g_j, hence a larger focusing factor (easy negatives are down-weighted harder) and a
larger weight. With g = 1 everywhere, EFL is the sigmoid focal loss.
"""
from typing import Callable, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EqualizedFocalLoss", "check_efl_hyperparameters"]

# Cells per chunk of the row loop: bounds every float32 temporary to 4 MB whatever the number of anchors.
_CHUNK_CELLS = 1 << 20

StatisticsSink = Callable[[Tensor, Tensor], None]


def check_efl_hyperparameters(gamma_b: float, scale: float, alpha: float) -> None:
    """Raise ValueError, naming the config key, when an EFL hyper-parameter is out of range."""
    if not gamma_b > 0:
        raise ValueError(f"MODEL.EFL.GAMMA_B (gamma_b) must be > 0, got {gamma_b}")
    if not scale >= 0:
        raise ValueError(f"MODEL.EFL.SCALE (s) must be >= 0, got {scale}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"MODEL.EFL.ALPHA (alpha) must be in [0, 1], got {alpha}")


def _efl_rows(
    x: Tensor, labels: Tensor, gamma: Tensor, w_pos: Tensor, w_neg: Tensor, want_grad: bool
) -> Tuple[Tensor, Optional[Tensor], Tensor, Tensor]:
    """
    EFL of a block of rows, and optionally its gradient and per-class sums of |gradient|.

    Every cell is first treated as a negative, densely; the one positive cell of each foreground row is then
    corrected through (row, class) indices, so no one-hot target is ever built.

    Args:
        x: (r, C) float32 logits.
        labels: (r,) int, in [-1, C].
        gamma: (C,) focusing factors.
        w_pos, w_neg: (C,) alpha * weight / normalizer and (1 - alpha) * weight / normalizer.
        want_grad: compute the gradient and the statistics.

    Returns:
        loss (scalar), grad (r, C) float32 or None, pos_sum (C,), neg_sum (C,).
    """
    num_classes = x.shape[1]
    valid = labels >= 0
    pos_rows = (valid & (labels < num_classes)).nonzero().squeeze(1)
    pos_cls = labels[pos_rows]

    # Negative cells: (1 - alpha) w p^gamma * (-log(1 - p)), with -log(1 - p) = softplus(z).
    p = torch.sigmoid(x)
    nlog_q = F.softplus(x)
    t = p.pow(gamma).mul_(w_neg)
    cell = t * nlog_q
    neg_at_pos = cell[pos_rows, pos_cls]
    loss = cell.sum(dim=1).mul_(valid).sum()

    # Positive cells: alpha w (1 - p)^gamma * (-log p), with -log p = softplus(-z).
    xp = x[pos_rows, pos_cls]
    gp = gamma[pos_cls]
    qp = torch.sigmoid(-xp)
    nlog_pp = F.softplus(-xp)
    fp = qp.pow(gp).mul_(w_pos[pos_cls])
    loss = loss + (fp * nlog_pp).sum() - neg_at_pos.sum()

    pos_sum = x.new_zeros(num_classes)
    neg_sum = x.new_zeros(num_classes)
    if not want_grad:
        return loss, None, pos_sum, neg_sum

    # d/dz of the negative term: w' p^gamma (gamma (1 - p) softplus(z) + p), always >= 0.
    grad = torch.neg(p, out=cell).add_(1.0).mul_(nlog_q).mul_(gamma).add_(p).mul_(t)
    ignored = (~valid).nonzero().squeeze(1)
    grad.index_fill_(0, ignored, 0.0)
    neg_sum += grad.sum(dim=0)
    neg_sum.index_add_(0, pos_cls, grad[pos_rows, pos_cls], alpha=-1.0)
    # d/dz of the positive term: -w' (1 - p)^gamma (gamma p (-log p) + 1 - p), always <= 0.
    grad_pos = fp.mul_(gp * (1.0 - qp) * nlog_pp + qp).neg_()
    grad[pos_rows, pos_cls] = grad_pos
    pos_sum.index_add_(0, pos_cls, grad_pos.abs())
    return loss, grad, pos_sum, neg_sum


class _EqualizedFocalLossFunction(torch.autograd.Function):
    """
    One pass over the logits computes the loss, its gradient and the per-class statistics; backward only
    scales the stored gradient and commits the statistics. The statistics are taken from the loss's own
    gradient, before ``grad_output``, so loss weights and AMP's loss scale never reach them.
    """

    @staticmethod
    def forward(
        ctx,
        logits: Tensor,
        labels: Tensor,
        gamma: Tensor,
        weight: Tensor,
        alpha: float,
        normalizer: float,
        sink: Optional[StatisticsSink],
    ) -> Tensor:
        num_rows, num_classes = logits.shape
        want_grad = ctx.needs_input_grad[0]
        w_pos = weight * (alpha / normalizer)
        w_neg = weight * ((1.0 - alpha) / normalizer)

        loss = logits.new_zeros((), dtype=torch.float32)
        grad = torch.empty_like(logits) if want_grad else None
        pos_sum = logits.new_zeros(num_classes, dtype=torch.float32)
        neg_sum = logits.new_zeros(num_classes, dtype=torch.float32)
        rows = max(1, _CHUNK_CELLS // num_classes)
        for start in range(0, num_rows, rows):
            block = slice(start, start + rows)
            l, g, ps, ns = _efl_rows(
                logits[block].float(), labels[block], gamma, w_pos, w_neg, want_grad
            )
            loss += l
            if want_grad:
                grad[block] = g
                pos_sum += ps
                neg_sum += ns

        ctx.grad = grad
        ctx.sink = sink
        ctx.statistics = (pos_sum, neg_sum)
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        grad = ctx.grad
        if grad is None:
            raise RuntimeError(
                "EqualizedFocalLoss: backward ran twice through the same call (retain_graph); "
                "its gradient buffer is handed over on the first backward. Call the loss again instead."
            )
        ctx.grad = None
        if ctx.sink is not None:
            ctx.sink(*ctx.statistics)
        grad.mul_(grad_output)
        return grad, None, None, None, None, None, None


class EqualizedFocalLoss(nn.Module):
    """
    Equalized Focal Loss over dense sigmoid logits, with its per-class statistics as buffers.

    Buffers (float32, shape (C,), persistent, identical on every process):
        pos_grad: accumulated |dL/dz| over positive cells of each class.
        neg_grad: accumulated |dL/dz| over negative cells of each class.
        pos_neg: g = clamp(pos_grad / (neg_grad + 1e-10), 0, 1); starts at 1, so the first step is focal loss.

    The statistics grow when gradients flow back through a call made in training mode; the increments are
    summed over all processes (when torch.distributed is initialised) before they are added.
    """

    def __init__(self, num_classes: int, gamma_b: float = 2.0, scale: float = 8.0, alpha: float = 0.25):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"EqualizedFocalLoss needs num_classes >= 1, got {num_classes}")
        check_efl_hyperparameters(gamma_b, scale, alpha)
        self.num_classes = num_classes
        self.gamma_b = float(gamma_b)
        self.scale = float(scale)
        self.alpha = float(alpha)
        self.register_buffer("pos_grad", torch.zeros(num_classes))
        self.register_buffer("neg_grad", torch.zeros(num_classes))
        self.register_buffer("pos_neg", torch.ones(num_classes))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, gamma_b={self.gamma_b}, "
            f"scale={self.scale}, alpha={self.alpha}"
        )

    def focusing_factors(self) -> Tensor:
        """(C,) gamma_j = gamma_b + scale * (1 - g_j), the exponents the next call will use."""
        return self.gamma_b + self.scale * (1.0 - self.pos_neg)

    def forward(self, logits: Tensor, gt_labels: Tensor, normalizer: float = 1.0) -> Tensor:
        """
        Args:
            logits: (R, C) classification logits of R anchors, any float dtype (computed in float32).
            gt_labels: (R,) integer labels: -1 ignore (no loss, no statistics), 0..C-1 foreground class,
                C background (a negative for every class).
            normalizer: the sum is divided by it (e.g. the number of positive anchors).

        Returns:
            Scalar float32 tensor: sum over non-ignored anchors and all classes of EFL, / normalizer.
        """
        self._check_inputs(logits, gt_labels, normalizer)
        gamma = self.focusing_factors()
        weight = gamma / self.gamma_b
        track = self.training and torch.is_grad_enabled() and logits.requires_grad
        return _EqualizedFocalLossFunction.apply(
            logits,
            gt_labels,
            gamma,
            weight,
            self.alpha,
            float(normalizer),
            self._accumulate if track else None,
        )

    def _check_inputs(self, logits: Tensor, gt_labels: Tensor, normalizer: float) -> None:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"EqualizedFocalLoss expects logits of shape (R, {self.num_classes}), got "
                f"{tuple(logits.shape)}: the number of classes must match MODEL.RETINANET.NUM_CLASSES"
            )
        if not logits.is_floating_point():
            raise ValueError(f"EqualizedFocalLoss expects floating-point logits, got {logits.dtype}")
        if gt_labels.shape != logits.shape[:1]:
            raise ValueError(
                f"gt_labels must have shape ({logits.shape[0]},) to match the logits, "
                f"got {tuple(gt_labels.shape)}"
            )
        if gt_labels.is_floating_point() or gt_labels.dtype == torch.bool:
            raise ValueError(f"gt_labels must be an integer tensor, got {gt_labels.dtype}")
        if not normalizer > 0:
            raise ValueError(f"normalizer must be > 0, got {normalizer}")
        if gt_labels.numel():
            lo, hi = (int(v) for v in torch.aminmax(gt_labels))
            if lo < -1 or hi > self.num_classes:
                raise ValueError(
                    f"gt_labels must lie in [-1, {self.num_classes}] (-1 ignore, {self.num_classes} "
                    f"background), got values in [{lo}, {hi}]"
                )

    @torch.no_grad()
    def _accumulate(self, pos_inc: Tensor, neg_inc: Tensor) -> None:
        increments = torch.stack((pos_inc, neg_inc))
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(increments)
        self.pos_grad += increments[0]
        self.neg_grad += increments[1]
        torch.clamp(self.pos_grad / (self.neg_grad + 1e-10), 0.0, 1.0, out=self.pos_neg)
