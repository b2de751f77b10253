"""
The EFL paper's improved one-stage baseline, built from detectron2's RetinaNet:
ATSS assignment, 2 anchors per location, GroupNorm towers, an IoU-prediction branch whose sigmoid multiplies the
classification score at test time, GIoU box loss weighted by the IoU targets, and a selectable classification
loss (focal loss, EFL or EQFL), each piece switchable by config for ablations.
"""
from typing import Dict, List, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from fvcore.nn import giou_loss
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY
from detectron2.modeling.backbone.fpn import FPN
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.structures import Boxes, Instances
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from .atss import atss_assign
from .loss import EqualizedFocalLoss, EqualizedQualityFocalLoss
from .retinanet import EFLRetinaNet

__all__ = [
    "ImprovedRetinaNet",
    "IoURetinaNetHead",
    "LateralP6P7",
    "PaddedFPN",
    "build_retinanet_resnet_fpn_lateral_p6p7_backbone",
]

CLS_LOSSES = ("focal", "efl", "eqfl")


class LateralP6P7(nn.Module):
    """
    P6 = 3x3 stride-2 conv of the FPN's C5 lateral (the 1x1 projection of C5), P7 = 3x3 stride-2 conv of P6
    with no ReLU in between: the neck of the authors' improved baseline. (detectron2's LastLevelP6P7 reads raw
    C5 or P5 and puts a ReLU before P7.)
    """

    def __init__(self, channels: int):
        super().__init__()
        self.num_levels = 2
        self.in_feature = "res5"
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            weight_init.c2_xavier_fill(module)
        # The FPN's own lateral conv, held in a tuple so that its weights are not registered here a second time.
        self.lateral: Tuple[nn.Module, ...] = ()

    def forward(self, c5: Tensor) -> List[Tensor]:
        p6 = self.p6(self.lateral[0](c5))
        return [p6, self.p7(p6)]


class PaddedFPN(FPN):
    """detectron2's FPN, whose inputs may be padded to another multiple than its coarsest stride."""

    def __init__(self, *, size_divisibility: int = 0, **kwargs):
        """size_divisibility: pad images to a multiple of this; 0 keeps FPN's (the coarsest output stride)."""
        super().__init__(**kwargs)
        if size_divisibility:
            self._size_divisibility = size_divisibility


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_fpn_lateral_p6p7_backbone(cfg, input_shape: ShapeSpec):
    """ResNet-FPN P3-P7 whose P6/P7 come from the C5 lateral (:class:`LateralP6P7`), padded as MODEL.FPN.SIZE_DIVISIBILITY."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    top_block = LateralP6P7(cfg.MODEL.FPN.OUT_CHANNELS)
    backbone = PaddedFPN(
        size_divisibility=cfg.MODEL.FPN.SIZE_DIVISIBILITY,
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
    top_block.lateral = (backbone.fpn_lateral5,)
    return backbone


class IoURetinaNetHead(RetinaNetHead):
    """RetinaNet's head plus a 3x3 conv on the box tower that predicts, per anchor, the IoU of its box."""

    @configurable
    def __init__(self, *, input_shape: List[ShapeSpec], num_anchors: int, conv_dims: List[int], **kwargs):
        super().__init__(input_shape=input_shape, num_anchors=num_anchors, conv_dims=conv_dims, **kwargs)
        self.iou_pred = nn.Conv2d(conv_dims[-1], num_anchors, kernel_size=3, stride=1, padding=1)
        nn.init.normal_(self.iou_pred.weight, mean=0, std=0.01)
        nn.init.constant_(self.iou_pred.bias, 0)

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """
        Returns:
            per-level (N, A*C, Hi, Wi) logits, (N, A*4, Hi, Wi) box deltas and (N, A, Hi, Wi) IoU logits.
        """
        logits, deltas, ious = [], [], []
        for feature in features:
            logits.append(self.cls_score(self.cls_subnet(feature)))
            box_features = self.bbox_subnet(feature)
            deltas.append(self.bbox_pred(box_features))
            ious.append(self.iou_pred(box_features))
        return logits, deltas, ious


def _build_cls_loss(cfg, efl: EqualizedFocalLoss) -> EqualizedFocalLoss:
    """MODEL.IMPROVED_BASELINE.CLS_LOSS: "efl" (``efl``, built from MODEL.EFL), "focal" (EFL with s = 0, which is
    exactly sigmoid focal loss with RETINANET.FOCAL_LOSS_*) or "eqfl" (EQFL with MODEL.EFL's settings)."""
    kind = cfg.MODEL.IMPROVED_BASELINE.CLS_LOSS
    if kind == "efl":
        return efl
    if kind == "focal":
        head = cfg.MODEL.RETINANET
        return EqualizedFocalLoss(efl.num_classes, head.FOCAL_LOSS_GAMMA, 0.0, head.FOCAL_LOSS_ALPHA, efl.implementation)
    if kind == "eqfl":
        return EqualizedQualityFocalLoss(
            efl.num_classes, efl.gamma_b, efl.scale, efl.implementation, efl.focusing, efl.weighting
        )
    raise ValueError(f"MODEL.IMPROVED_BASELINE.CLS_LOSS must be one of {CLS_LOSSES}, got {kind!r}")


def _mean_over_processes(value: Tensor) -> Tensor:
    """The mean of a scalar over all processes (the official normalisers are per-GPU averages)."""
    if comm.get_world_size() > 1:
        value = value.clone()
        torch.distributed.all_reduce(value)
        value = value / comm.get_world_size()
    return value


@META_ARCH_REGISTRY.register()
class ImprovedRetinaNet(EFLRetinaNet):
    """
    The paper's improved baseline (configs/LVISv1/improved_baseline_*). Losses, with P positive anchors
    (mean over processes) and their IoU targets t (IoU of the decoded prediction with its box, no gradient):
    - loss_cls: focal loss, EFL or EQFL (quality target t) over all anchors, / P;
    - loss_box_reg: GIoU loss of the positives weighted by t, / sum(t) (mean over processes);
    - loss_iou: BCE of the IoU logit against t over the positives, / P.
    At test time the score of (anchor, class) is sigmoid(cls) * sigmoid(IoU logit).
    """

    ema_normalizer = False

    @configurable
    def __init__(
        self,
        *,
        atss_topk: int = 18,
        iou_branch: bool = True,
        iou_weighted_box_loss: bool = True,
        **kwargs,
    ):
        """
        Args:
            atss_topk: ATSS candidates per level and box; 0 keeps RetinaNet's IoU-threshold matching.
            iou_branch: train the IoU prediction and multiply its sigmoid into the test scores.
            iou_weighted_box_loss: weight the GIoU loss by the IoU targets (else plain GIoU, / P).
            kwargs: arguments of :class:`EFLRetinaNet`.
        """
        super().__init__(**kwargs)
        self.atss_topk = atss_topk
        self.iou_branch = iou_branch
        self.iou_weighted_box_loss = iou_weighted_box_loss

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        feature_shapes = [ret["backbone"].output_shape()[f] for f in cfg.MODEL.RETINANET.IN_FEATURES]
        ret.update(
            head=IoURetinaNetHead(cfg, feature_shapes),
            cls_loss=_build_cls_loss(cfg, ret["cls_loss"]),
            atss_topk=cfg.MODEL.IMPROVED_BASELINE.ATSS_TOPK,
            iou_branch=cfg.MODEL.IMPROVED_BASELINE.IOU_BRANCH,
            iou_weighted_box_loss=cfg.MODEL.IMPROVED_BASELINE.IOU_WEIGHTED_BOX_LOSS,
        )
        return ret

    def forward_training(self, images, features, predictions, gt_instances):
        pred_logits, pred_deltas, pred_ious = predictions
        pred_deltas, pred_ious = self._transpose_dense_predictions([pred_deltas, pred_ious], [4, 1])
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, pred_ious)

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """ATSS labels and matched boxes, same outputs as :meth:`RetinaNet.label_anchors`."""
        if self.atss_topk <= 0:
            return super().label_anchors(anchors, gt_instances)
        gt_labels, matched_boxes = [], []
        for instances in gt_instances:
            matched, _ = atss_assign(anchors, instances.gt_boxes, self.atss_topk)
            positive = matched >= 0
            index = matched.clamp(min=0)
            if len(instances) > 0:
                labels = torch.where(positive, instances.gt_classes[index], self.num_classes)
                boxes = instances.gt_boxes.tensor[index]
            else:
                labels = torch.full_like(matched, self.num_classes)
                boxes = torch.zeros(len(matched), 4, device=matched.device)
            gt_labels.append(labels)
            matched_boxes.append(boxes)
        return gt_labels, matched_boxes

    def losses(
        self,
        anchors: List[Boxes],
        pred_logits: List[Tensor],
        gt_labels: List[Tensor],
        pred_deltas: List[Tensor],
        gt_boxes: List[Tensor],
        pred_ious: List[Tensor],
    ) -> Dict[str, Tensor]:
        """
        Args:
            pred_logits: per-level (N, A*C, Hi, Wi) head outputs.
            pred_deltas, pred_ious: per-level (N, Hi*Wi*A, 4) and (N, Hi*Wi*A, 1).
            anchors, gt_labels, gt_boxes: as in :meth:`RetinaNet.losses`.
        """
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos = pos_mask.sum()
        storage = get_event_storage()
        storage.put_scalar("num_pos_anchors", num_pos.item() / num_images)
        normalizer = _mean_over_processes(num_pos.float()).clamp(min=1.0).item()
        self._put_focusing_factors(storage)

        all_anchors = Boxes.cat(anchors).tensor.expand(num_images, -1, -1)
        pred_boxes = self.box2box_transform.apply_deltas(cat(pred_deltas, dim=1)[pos_mask], all_anchors[pos_mask])
        target_boxes = torch.stack(gt_boxes)[pos_mask]
        iou_targets = matched_pairwise_iou(Boxes(pred_boxes.detach()), Boxes(target_boxes)).clamp(min=0.0)

        if isinstance(self.cls_loss, EqualizedQualityFocalLoss):
            quality = torch.zeros_like(gt_labels, dtype=torch.float32)
            quality[pos_mask] = iou_targets
            loss_cls = self.cls_loss.forward_dense(pred_logits, gt_labels, quality, normalizer)
        else:
            loss_cls = self.cls_loss.forward_dense(pred_logits, gt_labels, normalizer)

        giou = giou_loss(pred_boxes, target_boxes, reduction="none")
        if self.iou_weighted_box_loss:
            box_normalizer = _mean_over_processes(iou_targets.sum()).clamp(min=1e-6)
            loss_box_reg = (giou * iou_targets).sum() / box_normalizer
        else:
            loss_box_reg = giou.sum() / normalizer
        losses = {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg}
        if self.iou_branch:
            iou_logits = cat(pred_ious, dim=1)[pos_mask].squeeze(-1)
            losses["loss_iou"] = F.binary_cross_entropy_with_logits(iou_logits, iou_targets, reduction="sum") / normalizer
        return losses

    def forward_inference(self, images, features: List[Tensor], predictions: List[List[Tensor]]):
        pred_logits, pred_deltas, pred_ious = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        anchors = self.anchor_generator(features)
        results: List[Instances] = []
        for i, image_size in enumerate(images.image_sizes):
            scores = [x[i].sigmoid() for x in pred_logits]
            if self.iou_branch:
                scores = [s * iou[i].sigmoid() for s, iou in zip(scores, pred_ious)]
            deltas = [x[i] for x in pred_deltas]
            results.append(self.inference_single_image(anchors, scores, deltas, image_size))
        return results

    def _decode_per_level_predictions(
        self,
        anchors: Boxes,
        pred_scores: Tensor,
        pred_deltas: Tensor,
        score_thresh: float,
        topk_candidates: int,
        image_size: Tuple[int, int],
    ) -> Instances:
        # As the released models: at most min(topk, H*W*A) (anchor, class) pairs per level, and boxes clipped to
        # the image before NMS.
        instances = super()._decode_per_level_predictions(
            anchors, pred_scores, pred_deltas, score_thresh, min(topk_candidates, len(anchors)), image_size
        )
        instances.pred_boxes.clip(image_size)
        return instances
