"""
Equalized Focal Loss (Li et al., "Equalized Focal Loss for Dense Long-Tailed Object Detection", CVPR 2022)
and the per-class gradient statistics that drive it.

For the cell (anchor i, class j) with logit z, p = sigmoid(z), target y = [label_i == j] and
p_t = p if y else 1 - p:

    EFL(i, j) = alpha_t * (gamma_j / gamma_b) * (1 - p_t) ** gamma_j * (-log p_t)
    gamma_j   = gamma_b + scale * (1 - g_j)

g_j (the buffer ``pos_neg``: the positive-to-negative gradient ratio) is the ratio of the gradient magnitude class
j has received on its positive cells to the magnitude it has received on its negative cells, accumulated since
training began. A class that sees few positives has a small g_j, hence a larger focusing factor (easy negatives
are down-weighted harder) and a larger weight. With g = 1 everywhere, EFL is the sigmoid focal loss.

This module needs torch only: any detector can use it (see docs/own-detector.md).
"""
import logging
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .function import IMPLEMENTATIONS, dense_efl, resolve_kernel
from .targets import DenseTargets

__all__ = ["EqualizedFocalLoss", "EqualizedQualityFocalLoss", "check_efl_hyperparameters"]

logger = logging.getLogger(__name__)

Normalizer = Union[float, Tensor]


def check_efl_hyperparameters(gamma_b: float, scale: float, alpha: float) -> None:
    """Raise ValueError, naming the config key, when an EFL hyper-parameter is out of range."""
    if not gamma_b > 0:
        raise ValueError(f"MODEL.EFL.GAMMA_B (gamma_b) must be > 0, got {gamma_b}")
    if not scale >= 0:
        raise ValueError(f"MODEL.EFL.SCALE (s) must be >= 0, got {scale}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"MODEL.EFL.ALPHA (alpha) must be in [0, 1], got {alpha}")


class EqualizedFocalLoss(nn.Module):
    """
    Equalized Focal Loss over dense sigmoid logits, with its per-class statistics as buffers.

    Buffers (float32, shape (C,), persistent, identical on every process):
        pos_grad: accumulated |dL/dz| over positive cells of each class.
        neg_grad: accumulated |dL/dz| over negative cells of each class.
        pos_neg: g = clamp(pos_grad / (neg_grad + 1e-10), 0, 1), the positive-to-negative gradient ratio; it
            starts at 1, so the first step is focal loss.

    The statistics grow when gradients flow back through a call made in training mode; the increments are
    summed over all processes (when torch.distributed is initialised) before they are added. A step whose
    increments are not finite adds nothing; such steps are reported in one warning every ``REPORT_PERIOD``
    updates (or by :meth:`report_nonfinite_steps`), so that checking them never stalls a GPU.

    Attributes:
        step: what to call the current training step in those warnings (a detector sets its iteration);
            when None, the loss counts its own updates.
    """

    REPORT_PERIOD = 20

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
            implementation: one of IMPLEMENTATIONS; "auto" picks Triton for CUDA tensors (checked once against
                chunked PyTorch, which it falls back to should it fail) and chunked PyTorch otherwise.
                $EFL_IMPLEMENTATION overrides it.
            focusing, weighting: use the per-class focusing factor gamma_j (else gamma_b for every class) and the
                weighting factor gamma_j / gamma_b (else 1): the paper's ablations switch one of them off.
        """
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"{type(self).__name__} needs num_classes >= 1, got {num_classes}")
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
        self.step: Optional[int] = None
        self.register_buffer("pos_grad", torch.zeros(num_classes))
        self.register_buffer("neg_grad", torch.zeros(num_classes))
        self.register_buffer("pos_neg", torch.ones(num_classes))
        self._updates = 0
        self._pending: List[Tuple[int, Tensor]] = []  # (step, "its increments were finite") not yet reported
        self._previous: Optional[Tuple[Tensor, Tensor, Tensor]] = None

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, gamma_b={self.gamma_b}, scale={self.scale}, "
            f"alpha={self.alpha}, focusing={self.focusing}, weighting={self.weighting}, "
            f"implementation={self.implementation}"
        )

    def focusing_factors(self) -> Tensor:
        """(C,) gamma_j = gamma_b + scale * (1 - g_j), the exponents the next call will use."""
        return self.gamma_b + self.scale * (1.0 - self.pos_neg)

    def forward(
        self, logits: Tensor, labels: Tensor, normalizer: Normalizer = 1.0, quality: Optional[Tensor] = None
    ) -> Tensor:
        """
        Args:
            logits: (R, C) classification logits of R anchors (or queries, or grid cells), any float dtype
                (computed in float32).
            labels: (R,) integer labels: -1 ignore (no loss, no statistics), 0..C-1 foreground class,
                C background (a negative for every class). Their values are not read back (on a GPU that would
                stall every step): a label above C acts as background and one below -1 as ignored, so check the
                classes where they come from, as this project's training loader checks every annotation.
            normalizer: the sum is divided by it (e.g. the number of positive anchors): a number or a 0-dim
                tensor (which saves a host sync on GPUs), > 0.
            quality: (R,) float soft targets in [0, 1] of the positive cells. EQFL's positive target; EFL's
                positive target is 1, and it ignores ``quality``, so that one call serves every variant.

        Returns:
            Scalar float32 tensor: sum over non-ignored anchors and all classes of the loss, / normalizer.
        """
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"{type(self).__name__} expects logits of shape (R, {self.num_classes}), got "
                f"{tuple(logits.shape)}: the number of classes must match (MODEL.RETINANET.NUM_CLASSES in "
                "detectron2 configs)"
            )
        if labels.shape != logits.shape[:1]:
            raise ValueError(
                f"labels must have shape ({logits.shape[0]},) to match the logits, got {tuple(labels.shape)}"
            )
        quality = self._checked_quality(quality, labels)
        # (R, C) is the one-level, one-anchor case of a dense head's (N, A*C, H, W) output: (1, C, R, 1).
        quality = None if quality is None else quality[None]
        return self._loss([logits.t()[None, :, :, None]], labels[None], 1, normalizer, quality)

    def forward_dense(
        self,
        level_logits: Sequence[Tensor],
        labels: Tensor,
        normalizer: Normalizer = 1.0,
        quality: Optional[Tensor] = None,
    ) -> Tensor:
        """
        The same loss read straight from a dense head's outputs, without permuting or concatenating them.

        Args:
            level_logits: per-level (N, A*C, Hi, Wi) logits, channel a*C + c for class c of anchor a.
            labels: (N, R) labels as in :meth:`forward`, R = sum of Hi*Wi*A, each image's anchors in
                (level, y, x, anchor) order, which is the order of detectron2's anchor generator.
            normalizer: as in :meth:`forward`.
            quality: (N, R) as in :meth:`forward`.
        """
        channels = {x.shape[1] for x in level_logits}
        if (
            not level_logits
            or len(channels) != 1
            or next(iter(channels)) % self.num_classes
            or any(x.dim() != 4 for x in level_logits)
        ):
            raise ValueError(
                f"forward_dense expects (N, A*{self.num_classes}, H, W) logits with the same A on every level, "
                f"got shapes {[tuple(x.shape) for x in level_logits]}: the number of classes must match "
                "(MODEL.RETINANET.NUM_CLASSES in detectron2 configs)"
            )
        num_anchors = next(iter(channels)) // self.num_classes
        num_rows = sum(x.shape[2] * x.shape[3] * num_anchors for x in level_logits)
        if labels.shape != (level_logits[0].shape[0], num_rows):
            raise ValueError(
                f"labels must have shape ({level_logits[0].shape[0]}, {num_rows}) to match the logits, "
                f"got {tuple(labels.shape)}"
            )
        quality = self._checked_quality(quality, labels)
        return self._loss(list(level_logits), labels, num_anchors, normalizer, quality)

    def _checked_quality(self, quality: Optional[Tensor], labels: Tensor) -> Optional[Tensor]:
        """EFL's positive target is 1: the quality targets of EQFL are not used."""
        return None

    def _class_weights(self, weight: Tensor, normalizer: Normalizer) -> Tuple[Tensor, Tensor]:
        """(C,) weights of positive and negative cells: alpha_t * weight / normalizer."""
        return weight * (self.alpha / normalizer), weight * ((1.0 - self.alpha) / normalizer)

    def _loss(
        self,
        levels: List[Tensor],
        labels: Tensor,
        num_anchors: int,
        normalizer: Normalizer,
        quality: Optional[Tensor],
    ) -> Tensor:
        self._check_values(levels[0], labels, normalizer)
        gamma_j = self.focusing_factors()
        gamma = gamma_j if self.focusing else torch.full_like(gamma_j, self.gamma_b)
        weight = gamma_j / self.gamma_b if self.weighting else torch.ones_like(gamma_j)
        w_pos, w_neg = self._class_weights(weight, normalizer)
        kernel = resolve_kernel(self.implementation, levels[0].device)
        track = self.training and torch.is_grad_enabled() and any(x.requires_grad for x in levels)
        targets = DenseTargets(labels, quality, gamma, w_pos, w_neg, num_anchors)
        return dense_efl(levels, targets, kernel, self._accumulate if track else None)

    def _check_values(self, logits: Tensor, labels: Tensor, normalizer: Normalizer) -> None:
        if not logits.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects floating-point logits, got {logits.dtype}")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
        if isinstance(normalizer, Tensor):
            if normalizer.numel() != 1:
                raise ValueError(f"normalizer must be a number or a one-element tensor, got {tuple(normalizer.shape)}")
        elif not normalizer > 0:
            raise ValueError(f"normalizer must be > 0, got {normalizer}")

    @torch.no_grad()
    def _accumulate(self, pos_inc: Tensor, neg_inc: Tensor) -> None:
        increments = torch.stack((pos_inc, neg_inc))
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(increments)
        # After the all-reduce every process takes the same decision, on the device: no host sync.
        finite = torch.isfinite(increments).all()
        increments = torch.where(finite, increments, torch.zeros_like(increments))
        self._previous = (self.pos_grad.clone(), self.neg_grad.clone(), self.pos_neg.clone())
        self.pos_grad += increments[0]
        self.neg_grad += increments[1]
        torch.clamp(self.pos_grad / (self.neg_grad + 1e-10), 0.0, 1.0, out=self.pos_neg)
        self._pending.append((self._updates if self.step is None else self.step, finite))
        self._updates += 1
        if len(self._pending) >= self.REPORT_PERIOD:
            self.report_nonfinite_steps()

    def report_nonfinite_steps(self) -> List[int]:
        """
        Warn about the steps since the last report whose statistics were not finite (and so added nothing), and
        return them. One host sync for all of them.
        """
        if not self._pending:
            return []
        steps, flags = zip(*self._pending)
        self._pending = []
        bad = [s for s, finite in zip(steps, torch.stack(flags).tolist()) if not finite]
        if bad:
            logger.warning(
                f"{type(self).__name__}: non-finite gradient statistics at iteration "
                f"{', '.join(map(str, bad))}; those steps add nothing to pos_grad / neg_grad"
            )
        return bad

    @torch.no_grad()
    def revert_last_update(self, where: Optional[Tensor] = None) -> None:
        """
        Undo the last statistics update exactly, for a training step that was then skipped (AMP overflow).

        Args:
            where: a 0-dim bool tensor: undo it only where it holds, decided on its device (no host sync).
        """
        if self._previous is not None:
            for buffer, value in zip((self.pos_grad, self.neg_grad, self.pos_neg), self._previous):
                buffer.copy_(value if where is None else torch.where(where, value, buffer))
            self._previous = None

    @torch.no_grad()
    def reset_statistics(self) -> None:
        """Start the statistics afresh (g = 1: the next step is focal loss), e.g. to fine-tune on another dataset."""
        self.pos_grad.zero_()
        self.neg_grad.zero_()
        self.pos_neg.fill_(1.0)
        self._previous = None


class EqualizedQualityFocalLoss(EqualizedFocalLoss):
    """
    Equalized Quality Focal Loss (EQFL, from the EFL authors' code base): quality focal loss with EFL's per-class
    focusing and weighting factors and the same statistics. For class j, with p = sigmoid(z):

        negative cell:                (gamma_j / gamma_b) * p^gamma_j          * BCE(z, 0)
        positive cell of quality t:   (gamma_j / gamma_b) * |t - p|^gamma_j    * BCE(z, t)

    t is e.g. the IoU of the anchor's predicted box with its ground truth, given as ``quality`` (required). There
    is no alpha. With g = 1 it is quality focal loss (Li et al., "Generalized Focal Loss", NeurIPS 2020) with
    beta = gamma_b.
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

    def _class_weights(self, weight: Tensor, normalizer: Normalizer) -> Tuple[Tensor, Tensor]:
        return weight / normalizer, weight / normalizer

    def _checked_quality(self, quality: Optional[Tensor], labels: Tensor) -> Optional[Tensor]:
        if quality is None or quality.shape != labels.shape or not quality.is_floating_point():
            got = "None" if quality is None else f"{quality.dtype} {tuple(quality.shape)}"
            raise ValueError(
                f"EqualizedQualityFocalLoss needs quality: a float tensor shaped like the labels "
                f"{tuple(labels.shape)}, got {got}"
            )
        return quality.detach().float()
