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
import functools
import logging
import os
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from detectron2.utils.events import get_event_storage, has_event_storage

from .kernels import DenseTargets
from .kernels.reference import efl_reference
from .kernels.torch_efl import efl_torch

__all__ = ["EqualizedFocalLoss", "EqualizedQualityFocalLoss", "check_efl_hyperparameters", "IMPLEMENTATIONS"]

# "auto": Triton on CUDA when it imports, else chunked PyTorch. The environment variable EFL_IMPLEMENTATION
# overrides the choice made in code or config, e.g. to force the reference path while debugging.
IMPLEMENTATIONS = ("auto", "triton", "torch", "reference")

StatisticsSink = Callable[[Tensor, Tensor], None]

logger = logging.getLogger(__name__)


def _current_iteration() -> str:
    return str(get_event_storage().iter) if has_event_storage() else "(outside a training loop)"


def check_efl_hyperparameters(gamma_b: float, scale: float, alpha: float) -> None:
    """Raise ValueError, naming the config key, when an EFL hyper-parameter is out of range."""
    if not gamma_b > 0:
        raise ValueError(f"MODEL.EFL.GAMMA_B (gamma_b) must be > 0, got {gamma_b}")
    if not scale >= 0:
        raise ValueError(f"MODEL.EFL.SCALE (s) must be >= 0, got {scale}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"MODEL.EFL.ALPHA (alpha) must be in [0, 1], got {alpha}")


@functools.lru_cache(maxsize=None)
def _triton_available() -> bool:
    try:
        from .kernels import triton_efl  # noqa: F401
    except ImportError:
        return False
    return True


def _resolve_implementation(requested: str, device: torch.device) -> str:
    implementation = os.environ.get("EFL_IMPLEMENTATION", requested)
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"EFL implementation must be one of {', '.join(IMPLEMENTATIONS)} (MODEL.EFL.IMPLEMENTATION or "
            f"$EFL_IMPLEMENTATION), got {implementation!r}"
        )
    if implementation == "auto":
        return "triton" if device.type == "cuda" and _triton_available() else "torch"
    if implementation == "triton":
        if not _triton_available():
            raise ValueError("EFL implementation 'triton' needs the triton package, which does not import here")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("EFL implementation 'triton' needs CUDA tensors (or TRITON_INTERPRET=1)")
    return implementation


# Arguments of _EqualizedFocalLossFunction.forward before the per-level logits.
_NUM_ARGS = 3


class _EqualizedFocalLossFunction(torch.autograd.Function):
    """
    EFL over per-level dense logits, with the statistics taken from the loss's own gradient, before
    ``grad_output``: loss weights and AMP's loss scale never reach them.

    - "triton": forward reads the logits once for the loss; backward reads them again and writes the gradient
      and the per-class statistics in the same pass. Nothing (anchors x classes) is kept in between.
    - "torch" / "reference": forward computes loss, gradient and statistics together (cheaper on the CPU than
      computing twice); backward scales the stored gradient in place.
    """

    @staticmethod
    def forward(
        ctx, targets: DenseTargets, implementation: str, sink: Optional[StatisticsSink], *levels: Tensor
    ) -> Tensor:
        want_grad = any(ctx.needs_input_grad[_NUM_ARGS:])
        ctx.implementation = implementation
        ctx.sink = sink
        if implementation == "triton":
            from .kernels.triton_efl import efl_loss_triton

            if want_grad:
                ctx.targets = targets
                ctx.save_for_backward(*levels)
            return efl_loss_triton(levels, targets)
        compute = efl_reference if implementation == "reference" else efl_torch
        loss, grads, pos_sum, neg_sum = compute(levels, targets, want_grad)
        ctx.grads = grads
        ctx.statistics = (pos_sum, neg_sum)
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        if ctx.implementation == "triton":
            from .kernels.triton_efl import efl_grad_triton

            grads, pos_sum, neg_sum = efl_grad_triton(ctx.saved_tensors, ctx.targets, grad_output)
        else:
            grads = ctx.grads
            if grads is None:
                raise RuntimeError(
                    "EqualizedFocalLoss: backward ran twice through the same call (retain_graph); its "
                    "gradient buffer is handed over on the first backward. Call the loss again instead."
                )
            ctx.grads = None
            pos_sum, neg_sum = ctx.statistics
            for grad in grads:
                grad.mul_(grad_output)
        if ctx.sink is not None:
            ctx.sink(pos_sum, neg_sum)
        return (None,) * _NUM_ARGS + tuple(grads)


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

    def __init__(
        self,
        num_classes: int,
        gamma_b: float = 2.0,
        scale: float = 8.0,
        alpha: float = 0.25,
        implementation: str = "auto",
        focusing: bool = True,
        weighting: bool = True,
    ):
        """
        Args:
            num_classes: C.
            gamma_b, scale, alpha: EFL's gamma_b, s and alpha.
            focusing, weighting: use the per-class focusing factor gamma_j (else gamma_b for every class) and the
                weighting factor gamma_j / gamma_b (else 1): the paper's ablations switch one of them off.
            implementation: one of IMPLEMENTATIONS; "auto" picks Triton for CUDA tensors and chunked PyTorch
                otherwise. $EFL_IMPLEMENTATION overrides it.
        """
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"EqualizedFocalLoss needs num_classes >= 1, got {num_classes}")
        check_efl_hyperparameters(gamma_b, scale, alpha)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"MODEL.EFL.IMPLEMENTATION must be one of {', '.join(IMPLEMENTATIONS)}, got {implementation!r}"
            )
        self.num_classes = num_classes
        self.gamma_b = float(gamma_b)
        self.scale = float(scale)
        self.alpha = float(alpha)
        self.implementation = implementation
        self.focusing = focusing
        self.weighting = weighting
        self.register_buffer("pos_grad", torch.zeros(num_classes))
        self.register_buffer("neg_grad", torch.zeros(num_classes))
        self.register_buffer("pos_neg", torch.ones(num_classes))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, gamma_b={self.gamma_b}, scale={self.scale}, "
            f"alpha={self.alpha}, focusing={self.focusing}, weighting={self.weighting}, "
            f"implementation={self.implementation}"
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
        return self._forward_rows(logits, gt_labels, normalizer, None)

    def forward_dense(self, level_logits: Sequence[Tensor], gt_labels: Tensor, normalizer: float = 1.0) -> Tensor:
        """
        The same loss read straight from a dense head's outputs, without permuting or concatenating them.

        Args:
            level_logits: per-level (N, A*C, Hi, Wi) logits, channel a*C + c for class c of anchor a.
            gt_labels: (N, R) labels as in :meth:`forward`, R = sum of Hi*Wi*A, each image's anchors in
                (level, y, x, anchor) order, which is the order of detectron2's anchor generator.
            normalizer: as in :meth:`forward`.
        """
        return self._forward_levels(level_logits, gt_labels, normalizer, None)

    def _forward_rows(
        self, logits: Tensor, gt_labels: Tensor, normalizer: float, quality: Optional[Tensor]
    ) -> Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"{type(self).__name__} expects logits of shape (R, {self.num_classes}), got "
                f"{tuple(logits.shape)}: the number of classes must match MODEL.RETINANET.NUM_CLASSES"
            )
        if gt_labels.shape != logits.shape[:1]:
            raise ValueError(
                f"gt_labels must have shape ({logits.shape[0]},) to match the logits, "
                f"got {tuple(gt_labels.shape)}"
            )
        # (R, C) is the one-level, one-anchor case of a dense head's (N, A*C, H, W) output: (1, C, R, 1).
        quality = None if quality is None else quality[None]
        return self._loss([logits.t()[None, :, :, None]], gt_labels[None], 1, normalizer, quality)

    def _forward_levels(
        self, level_logits: Sequence[Tensor], gt_labels: Tensor, normalizer: float, quality: Optional[Tensor]
    ) -> Tensor:
        channels = {x.shape[1] for x in level_logits}
        if len(channels) != 1 or next(iter(channels)) % self.num_classes or any(x.dim() != 4 for x in level_logits):
            raise ValueError(
                f"forward_dense expects (N, A*{self.num_classes}, H, W) logits with the same A on every level, "
                f"got shapes {[tuple(x.shape) for x in level_logits]}: the number of classes must match "
                "MODEL.RETINANET.NUM_CLASSES"
            )
        num_anchors = next(iter(channels)) // self.num_classes
        num_rows = sum(x.shape[2] * x.shape[3] * num_anchors for x in level_logits)
        if gt_labels.shape != (level_logits[0].shape[0], num_rows):
            raise ValueError(
                f"gt_labels must have shape ({level_logits[0].shape[0]}, {num_rows}) to match the logits, "
                f"got {tuple(gt_labels.shape)}"
            )
        return self._loss(list(level_logits), gt_labels, num_anchors, normalizer, quality)

    def _class_weights(self, weight: Tensor, normalizer: float) -> Tuple[Tensor, Tensor]:
        """(C,) weights of positive and negative cells: alpha_t * weight / normalizer."""
        return weight * (self.alpha / normalizer), weight * ((1.0 - self.alpha) / normalizer)

    def _loss(
        self,
        levels: List[Tensor],
        gt_labels: Tensor,
        num_anchors: int,
        normalizer: float,
        quality: Optional[Tensor] = None,
    ) -> Tensor:
        self._check_values(levels[0], gt_labels, normalizer)
        gamma_j = self.focusing_factors()
        gamma = gamma_j if self.focusing else torch.full_like(gamma_j, self.gamma_b)
        weight = gamma_j / self.gamma_b if self.weighting else torch.ones_like(gamma_j)
        w_pos, w_neg = self._class_weights(weight, normalizer)
        implementation = _resolve_implementation(self.implementation, levels[0].device)
        track = self.training and torch.is_grad_enabled() and any(x.requires_grad for x in levels)
        targets = DenseTargets(gt_labels, quality, gamma, w_pos, w_neg, num_anchors)
        return _EqualizedFocalLossFunction.apply(
            targets, implementation, self._accumulate if track else None, *levels
        )

    def _check_values(self, logits: Tensor, gt_labels: Tensor, normalizer: float) -> None:
        if not logits.is_floating_point():
            raise ValueError(f"EqualizedFocalLoss expects floating-point logits, got {logits.dtype}")
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
        # After the all-reduce every process takes the same decision.
        if not torch.isfinite(increments).all():
            logger.warning(
                f"EqualizedFocalLoss: non-finite gradient statistics at iteration {_current_iteration()}; "
                "this step adds nothing to pos_grad / neg_grad"
            )
            return
        self._previous = (self.pos_grad.clone(), self.neg_grad.clone(), self.pos_neg.clone())
        self.pos_grad += increments[0]
        self.neg_grad += increments[1]
        torch.clamp(self.pos_grad / (self.neg_grad + 1e-10), 0.0, 1.0, out=self.pos_neg)

    @torch.no_grad()
    def revert_last_update(self) -> None:
        """Undo the last statistics update exactly, for a training step that was then skipped (AMP overflow)."""
        previous = getattr(self, "_previous", None)
        if previous is not None:
            for buffer, value in zip((self.pos_grad, self.neg_grad, self.pos_neg), previous):
                buffer.copy_(value)
            self._previous = None


class EqualizedQualityFocalLoss(EqualizedFocalLoss):
    """
    Equalized Quality Focal Loss (EQFL, from the EFL authors' code base): quality focal loss with EFL's per-class
    focusing and weighting factors and the same statistics. For class j, with p = sigmoid(z):

        negative cell:                (gamma_j / gamma_b) * p^gamma_j          * BCE(z, 0)
        positive cell of quality t:   (gamma_j / gamma_b) * |t - p|^gamma_j    * BCE(z, t)

    t is the IoU of the anchor's predicted box with its ground truth. There is no alpha. With g = 1 it is
    quality focal loss (Li et al., "Generalized Focal Loss", NeurIPS 2020) with beta = gamma_b.
    """

    def __init__(
        self,
        num_classes: int,
        gamma_b: float = 2.0,
        scale: float = 8.0,
        implementation: str = "auto",
        focusing: bool = True,
        weighting: bool = True,
    ):
        super().__init__(num_classes, gamma_b, scale, 0.5, implementation, focusing, weighting)

    def extra_repr(self) -> str:
        return super().extra_repr().replace(f"alpha={self.alpha}, ", "")

    def _class_weights(self, weight: Tensor, normalizer: float) -> Tuple[Tensor, Tensor]:
        return weight / normalizer, weight / normalizer

    def forward(self, logits: Tensor, gt_labels: Tensor, quality: Tensor, normalizer: float = 1.0) -> Tensor:
        """
        Args:
            logits, gt_labels, normalizer: as in :meth:`EqualizedFocalLoss.forward`.
            quality: (R,) float targets in [0, 1] of the positive anchors (read only where the label is a class).
        """
        return self._forward_rows(logits, gt_labels, normalizer, self._checked(quality, gt_labels))

    def forward_dense(
        self, level_logits: Sequence[Tensor], gt_labels: Tensor, quality: Tensor, normalizer: float = 1.0
    ) -> Tensor:
        """
        Args:
            level_logits, gt_labels, normalizer: as in :meth:`EqualizedFocalLoss.forward_dense`.
            quality: (N, R) float targets in [0, 1] of the positive anchors.
        """
        return self._forward_levels(level_logits, gt_labels, normalizer, self._checked(quality, gt_labels))

    @staticmethod
    def _checked(quality: Tensor, gt_labels: Tensor) -> Tensor:
        if quality.shape != gt_labels.shape or not quality.is_floating_point():
            raise ValueError(
                f"quality must be a float tensor shaped like gt_labels {tuple(gt_labels.shape)}, got "
                f"{quality.dtype} {tuple(quality.shape)}"
            )
        return quality.detach().float()
