"""EFLFCOS: detectron2's FCOS with Equalized Focal Loss as its classification loss."""
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.layers import cat
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.structures import Boxes

from .efl_detector import EFLDetectorMixin

__all__ = ["EFLFCOS"]

# FCOS's own loss normaliser: a moving average of the positive count, momentum 0.9, from 300 (FCOS.losses)
FCOS_NORMALIZER_START = 300.0


class EFLFCOS(EFLDetectorMixin, FCOS):
    """
    FCOS whose classification term is :class:`EqualizedFocalLoss` (or any variant given as ``cls_loss``).
    Anchor-point labelling (center sampling, scale ranges), the GIoU box loss, the centerness loss and
    inference are FCOS's. Its loss normaliser, FCOS's moving average of the positive count (from 300), is taken
    over the mean count of all processes and kept in the buffer ``loss_normalizer`` (see
    :class:`EFLDetectorMixin`).

    A LazyConfig model: detectron2's ``configs/common/models/fcos.py`` builds it with ``model._target_`` set to
    this class and nothing else changed (there is no yacs config for FCOS in detectron2).
    """

    def __init__(
        self, *, normalizer_momentum: Optional[float] = 0.9, normalizer_start: float = FCOS_NORMALIZER_START, **kwargs
    ):
        """
        Args:
            normalizer_momentum, normalizer_start: FCOS's own normaliser by default, a moving average with
                momentum 0.9 from 300 (see :class:`EFLDetectorMixin`).
            kwargs: arguments of :class:`EFLDetectorMixin` and :class:`FCOS`. Of the mixin's, ``cls_loss`` is by
                default the paper's EFL, with FCOS's ``focal_loss_gamma`` and ``focal_loss_alpha`` (2 and 0.25) as
                gamma_b and alpha.
        """
        super().__init__(normalizer_momentum=normalizer_momentum, normalizer_start=normalizer_start, **kwargs)

    def forward_training(self, images, features, predictions, gt_instances):
        # Box deltas and centerness are transposed to (N, Hi*Wi, K) as FCOS does; the classification logits stay
        # in the head's (N, C, Hi, Wi) layout, which EFL reads without copying an (anchors x classes) tensor.
        pred_logits, pred_deltas, pred_centerness = predictions
        pred_deltas, pred_centerness = self._transpose_dense_predictions([pred_deltas, pred_centerness], [4, 1])
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, pred_centerness)

    def losses(
        self,
        anchors: List[Boxes],
        pred_logits: List[Tensor],
        gt_labels: List[Tensor],
        pred_anchor_deltas: List[Tensor],
        gt_boxes: List[Tensor],
        pred_centerness: List[Tensor],
    ) -> Dict[str, Tensor]:
        """
        Args:
            anchors, gt_labels, gt_boxes: as in :meth:`FCOS.losses`; ``gt_labels`` are per-image (R,) in
                {0..C-1, C background} (FCOS ignores no anchor point).
            pred_logits: per-level (N, C, Hi, Wi) head outputs, untransposed.
            pred_anchor_deltas, pred_centerness: per-level (N, Hi*Wi, 4) and (N, Hi*Wi, 1).

        Returns:
            FCOS's three losses, each divided by the normaliser: "loss_fcos_cls" (EFL), "loss_fcos_loc" (GIoU of
            the positives) and "loss_fcos_ctr" (BCE of the positives' centerness).
        """
        # FCOS.losses cannot be called for its box and centerness terms: it computes the classification loss in
        # the same body (from a dense one-hot target over the transposed logits), syncs the host for the positive
        # count and keeps its normaliser in a Python float. The two other terms are therefore assembled here from
        # the pieces FCOS itself uses (_dense_box_regression_loss with GIoU, compute_ctrness_targets, BCE over the
        # positives); the tests check all three against FCOS.losses at g = 1, where EFL is focal loss.
        gt_labels, pos_mask, normalizer = self.efl_step(gt_labels)  # (N, R), (N, R), 0-dim

        loss_cls = self.cls_loss.forward_dense(pred_logits, gt_labels, normalizer)
        loss_loc = _dense_box_regression_loss(
            anchors, self.box2box_transform, pred_anchor_deltas, gt_boxes, pos_mask, box_reg_loss_type="giou"
        )
        # The centerness of the positives, summed with masks rather than boolean-mask indexing (which would read
        # the mask back to the host). The targets off the positives can be NaN (an anchor point outside the box
        # it is paired with): they are replaced before the loss, so that neither it nor its gradient sees them.
        ctr_targets = self.compute_ctrness_targets(anchors, gt_boxes)  # (N, R)
        ctr_targets = torch.where(pos_mask, ctr_targets, torch.zeros_like(ctr_targets))
        ctr_logits = cat(pred_centerness, dim=1).squeeze(2)  # (N, R)
        loss_ctr = F.binary_cross_entropy_with_logits(ctr_logits, ctr_targets, reduction="none")
        loss_ctr = torch.where(pos_mask, loss_ctr, torch.zeros_like(loss_ctr)).sum()
        return {"loss_fcos_cls": loss_cls, "loss_fcos_loc": loss_loc / normalizer, "loss_fcos_ctr": loss_ctr / normalizer}
