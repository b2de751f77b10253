"""EFLRetinaNet: detectron2's RetinaNet with Equalized Focal Loss as its classification loss."""
import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage, get_event_storage

from .loss import EqualizedFocalLoss

__all__ = ["EFLRetinaNet", "lvis_frequency_groups"]

FREQUENCY_GROUPS = ("rare", "common", "frequent")


def lvis_frequency_groups(dataset_name: str, num_classes: int) -> Optional[List[int]]:
    """
    LVIS frequency group of each contiguous class id (0 rare: <= 10 training images, 1 common: 11-100,
    2 frequent: > 100), from the dataset's ``class_image_count`` metadata; None when it has none.
    """
    metadata = MetadataCatalog.get(dataset_name)
    counts = metadata.get("class_image_count")
    if counts is None:
        return None
    if len(counts) != num_classes:
        raise ValueError(
            f"Dataset '{dataset_name}' has {len(counts)} categories but MODEL.RETINANET.NUM_CLASSES is "
            f"{num_classes}: set NUM_CLASSES to {len(counts)}"
        )
    id_map = metadata.get("thing_dataset_id_to_contiguous_id") or {c["id"]: c["id"] - 1 for c in counts}
    groups = [0] * num_classes
    for c in counts:
        n = c["image_count"]
        groups[id_map[c["id"]]] = 0 if n <= 10 else (1 if n <= 100 else 2)
    return groups


@META_ARCH_REGISTRY.register()
class EFLRetinaNet(RetinaNet):
    """
    RetinaNet whose classification term is :class:`EqualizedFocalLoss`. Box regression, anchor labelling and
    the loss normaliser are RetinaNet's. The EFL statistics are buffers of ``self.cls_loss``, and the normaliser
    (an exponential moving average of the positive count, a Python float in RetinaNet, reset by a resume) is the
    buffer ``loss_normalizer``: both are saved with the model.
    """

    # Subclasses with a per-step normaliser set this to False.
    ema_normalizer = True

    @configurable
    def __init__(
        self,
        *,
        cls_loss: EqualizedFocalLoss,
        frequency_groups: Optional[Sequence[int]] = None,
        **kwargs,
    ):
        """
        Args:
            cls_loss: the classification loss (EqualizedFocalLoss or a subclass), which holds the statistics.
            frequency_groups: optional (C,) LVIS frequency group of each class (0 rare, 1 common,
                2 frequent); when given, the mean focusing factor of each group is logged while training.
            kwargs: arguments of :class:`RetinaNet`.
        """
        super().__init__(**kwargs)
        if cls_loss.num_classes != self.num_classes:
            raise ValueError(f"cls_loss has {cls_loss.num_classes} classes, the detector {self.num_classes}")
        self.cls_loss = cls_loss
        groups = None if frequency_groups is None else torch.as_tensor(frequency_groups)
        self.register_buffer("frequency_groups", groups, persistent=False)
        if self.ema_normalizer:
            # float64, so that the average evolves exactly as RetinaNet's Python float does (same start, 100)
            self.register_buffer("loss_normalizer", torch.tensor(100.0, dtype=torch.float64))

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        efl = cfg.MODEL.EFL
        ret["cls_loss"] = EqualizedFocalLoss(
            cfg.MODEL.RETINANET.NUM_CLASSES,
            efl.GAMMA_B,
            efl.SCALE,
            efl.ALPHA,
            implementation=efl.IMPLEMENTATION,
            focusing=efl.FOCUSING_FACTOR,
            weighting=efl.WEIGHTING_FACTOR,
        )
        if cfg.DATASETS.TRAIN:
            ret["frequency_groups"] = lvis_frequency_groups(
                cfg.DATASETS.TRAIN[0], cfg.MODEL.RETINANET.NUM_CLASSES
            )
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
            dict with "loss_cls" (EFL) and "loss_box_reg" (RetinaNet's), both divided by RetinaNet's normaliser.
        """
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos_anchors = pos_mask.sum().item()
        storage = get_event_storage()
        storage.put_scalar("num_pos_anchors", num_pos_anchors / num_images)
        normalizer = self._ema_update("loss_normalizer", max(num_pos_anchors, 1), 100).item()
        self._put_focusing_factors(storage)

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

    def _put_focusing_factors(self, storage: EventStorage) -> None:
        """
        Log the mean focusing factor gamma_j and gradient ratio g_j of this step, over all classes and per LVIS
        frequency group. g_j shows the imbalance even when s = 0 leaves every gamma_j at gamma_b.
        """
        values = {}
        for name, per_class in (("gamma", self.cls_loss.focusing_factors()), ("g", self.cls_loss.pos_neg)):
            means = per_class.mean().unsqueeze(0)
            if self.frequency_groups is not None:
                sums = per_class.new_zeros(3).index_add_(0, self.frequency_groups, per_class)
                sizes = torch.bincount(self.frequency_groups, minlength=3)
                means = torch.cat((means, sums / sizes))  # an empty group gives nan: not logged below
            names = (f"efl/{name}_mean",) + tuple(f"efl/{name}_{g}" for g in FREQUENCY_GROUPS)
            values.update((n, v) for n, v in zip(names, means.tolist()) if math.isfinite(v))
        storage.put_scalars(**values, smoothing_hint=False)
