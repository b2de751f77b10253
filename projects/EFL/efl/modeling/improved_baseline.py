"""
The EFL paper's improved one-stage baseline, built from detectron2's RetinaNet: ATSS assignment, 2 anchors per
location, GroupNorm towers, an IoU-prediction branch whose sigmoid multiplies the classification score at test
time, GIoU box loss weighted by the IoU targets, and a selectable classification loss (focal loss, EFL or EQFL,
MODEL.EFL.LOSS), each piece switchable by config for ablations. Its head and neck are in head.py and neck.py.
"""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes, Instances
from detectron2.structures.boxes import matched_pairwise_iou

from .atss import atss_assign
from .efl_detector import EFLDetectorMixin, build_cls_loss, mean_over_processes
from .giou import giou_loss
from .head import IoURetinaNetHead

__all__ = ["ImprovedRetinaNet"]


@META_ARCH_REGISTRY.register()
class ImprovedRetinaNet(EFLDetectorMixin, RetinaNet):
    """
    The paper's improved baseline (configs/LVISv1/improved_baseline_*). Losses, with P positive anchors
    (mean over processes) and their IoU targets t (IoU of the decoded prediction with its box, no gradient):
    - loss_cls: focal loss, EFL or EQFL (quality target t) over all anchors, / P;
    - loss_box_reg: GIoU loss of the positives weighted by t, / sum(t) (mean over processes);
    - loss_iou: BCE of the IoU logit against t over the positives, / P.
    At test time the score of (anchor, class) is sigmoid(cls) * sigmoid(IoU logit).
    """

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
            kwargs: arguments of :class:`EFLDetectorMixin` and :class:`RetinaNet`.
        """
        super().__init__(**kwargs)
        self.atss_topk = atss_topk
        self.iou_branch = iou_branch
        self.iou_weighted_box_loss = iou_weighted_box_loss

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        head_cfg = cfg.MODEL.RETINANET
        feature_shapes = [backbone.output_shape()[f] for f in head_cfg.IN_FEATURES]
        return {
            "backbone": backbone,
            "head": IoURetinaNetHead(cfg, feature_shapes),
            "head_in_features": head_cfg.IN_FEATURES,
            "anchor_generator": build_anchor_generator(cfg, feature_shapes),
            "box2box_transform": Box2BoxTransform(weights=head_cfg.BBOX_REG_WEIGHTS),
            # used only when ATSS is off (atss_topk 0)
            "anchor_matcher": Matcher(head_cfg.IOU_THRESHOLDS, head_cfg.IOU_LABELS, allow_low_quality_matches=True),
            "num_classes": head_cfg.NUM_CLASSES,
            "test_score_thresh": head_cfg.SCORE_THRESH_TEST,
            "test_topk_candidates": head_cfg.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": head_cfg.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "vis_period": cfg.VIS_PERIOD,
            "input_format": cfg.INPUT.FORMAT,
            "cls_loss": build_cls_loss(cfg, head_cfg.NUM_CLASSES),
            "atss_topk": cfg.MODEL.IMPROVED_BASELINE.ATSS_TOPK,
            "iou_branch": cfg.MODEL.IMPROVED_BASELINE.IOU_BRANCH,
            "iou_weighted_box_loss": cfg.MODEL.IMPROVED_BASELINE.IOU_WEIGHTED_BOX_LOSS,
        }

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
        gt_labels, pos_mask, normalizer = self.efl_step(gt_labels)  # (N, R), (N, R), 0-dim

        # The box terms are computed for every anchor and masked, rather than for the positives picked out by
        # boolean-mask indexing, which costs a GPU a host sync each time: the extra work is elementwise.
        positive = pos_mask.reshape(-1)
        all_anchors = Boxes.cat(anchors).tensor.repeat(num_images, 1)
        pred_boxes = self.box2box_transform.apply_deltas(cat(pred_deltas, dim=1).reshape(-1, 4), all_anchors)
        target_boxes = torch.stack(gt_boxes).reshape(-1, 4)
        iou = matched_pairwise_iou(Boxes(pred_boxes.detach()), Boxes(target_boxes)).clamp(min=0.0)
        iou_targets = torch.where(positive, iou, torch.zeros_like(iou))  # (N*R,), 0 off the positives

        # EQFL's positive targets are the IoUs; EFL and focal loss ignore them.
        loss_cls = self.cls_loss.forward_dense(pred_logits, gt_labels, normalizer, iou_targets.view(num_images, -1))

        giou = torch.where(positive, giou_loss(pred_boxes, target_boxes), torch.zeros_like(iou))
        if self.iou_weighted_box_loss:
            box_normalizer = mean_over_processes(iou_targets.sum()).clamp(min=1e-6)
            loss_box_reg = (giou * iou_targets).sum() / box_normalizer
        else:
            loss_box_reg = giou.sum() / normalizer
        losses = {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg}
        if self.iou_branch:
            iou_logits = cat(pred_ious, dim=1).reshape(-1)
            bce = F.binary_cross_entropy_with_logits(iou_logits, iou_targets, reduction="none")
            losses["loss_iou"] = torch.where(positive, bce, torch.zeros_like(bce)).sum() / normalizer
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
