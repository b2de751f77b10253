"""EFLRetinaNet: detectron2's RetinaNet with Equalized Focal Loss as its classification loss."""
from typing import Dict, List, Optional

import torch
from torch import Tensor

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes

from .efl_detector import EFLDetectorMixin, build_cls_loss

__all__ = ["EFLRetinaNet"]


@META_ARCH_REGISTRY.register()
class EFLRetinaNet(EFLDetectorMixin, RetinaNet):
    """
    RetinaNet whose classification term is :class:`EqualizedFocalLoss` (or the variant MODEL.EFL.LOSS names).
    Box regression and anchor labelling are RetinaNet's; its loss normaliser, a moving average of the positive
    count, is kept in the buffer ``loss_normalizer`` and averaged over processes (see :class:`EFLDetectorMixin`).
    """

    @configurable
    def __init__(self, *, normalizer_momentum: Optional[float] = 0.9, normalizer_start: float = 100.0, **kwargs):
        """
        Args:
            normalizer_momentum, normalizer_start: RetinaNet's own normaliser by default, a moving average with
                momentum 0.9 from 100 (see :class:`EFLDetectorMixin`).
            kwargs: arguments of :class:`EFLDetectorMixin` (``cls_loss``: the paper's EFL by default) and
                :class:`RetinaNet`.
        """
        super().__init__(normalizer_momentum=normalizer_momentum, normalizer_start=normalizer_start, **kwargs)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["cls_loss"] = build_cls_loss(cfg, cfg.MODEL.RETINANET.NUM_CLASSES)
        return ret

    def forward_training(self, images, features, predictions, gt_instances):
        # Only the box deltas are transposed to (N, Hi*Wi*A, 4): EFL reads the classification logits in the
        # head's own (N, A*C, Hi, Wi) layout, which saves copying (anchors x classes) tensors.
        pred_logits, pred_anchor_deltas = predictions
        (pred_anchor_deltas,) = self._transpose_dense_predictions([pred_anchor_deltas], [4])
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)

    def losses(
        self,
        anchors: List[Boxes],
        pred_logits: List[Tensor],
        gt_labels: List[Tensor],
        pred_anchor_deltas: List[Tensor],
        gt_boxes: List[Tensor],
    ) -> Dict[str, Tensor]:
        """
        Args:
            anchors, gt_labels, pred_anchor_deltas, gt_boxes: as in :meth:`RetinaNet.losses`; ``gt_labels`` are
                per-image (R,) in {-1 ignore, 0..C-1, C background}, in the anchor generator's order.
            pred_logits: per-level (N, A*C, Hi, Wi) head outputs, untransposed. EFL pairs the logit of
                channel a*C + c at (y, x) with anchor (y, x, a)'s label, so every gradient is credited to its
                own (anchor, class) cell for any number of anchors per location.

        Returns:
            dict with "loss_cls" (EFL) and "loss_box_reg" (RetinaNet's), both divided by the normaliser.
        """
        gt_labels, pos_mask, normalizer = self.efl_step(gt_labels)  # (N, R), (N, R), 0-dim

        loss_cls = self.cls_loss.forward_dense(pred_logits, gt_labels, normalizer)
        loss_box_reg = _dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            pos_mask,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg / normalizer}
