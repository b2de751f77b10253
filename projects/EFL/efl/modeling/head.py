"""The improved baseline's head: RetinaNet's, plus an IoU prediction on the box tower."""
from typing import List, Tuple

from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead

__all__ = ["IoURetinaNetHead"]


class IoURetinaNetHead(RetinaNetHead):
    """RetinaNet's head plus a 3x3 conv on the box tower that predicts, per anchor, the IoU of its box."""

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_anchors: int,
        conv_dims: List[int],
        tower_conv_bias: bool = True,
        **kwargs,
    ):
        """
        Args:
            tower_conv_bias: False drops the bias of the towers' convs when a norm follows them (RetinaNetHead's
                ``norm``), as the official head has none; their weights keep RetinaNetHead's normal(0, 0.01).
            input_shape, num_anchors, conv_dims, kwargs: arguments of :class:`RetinaNetHead`.
        """
        super().__init__(input_shape=input_shape, num_anchors=num_anchors, conv_dims=conv_dims, **kwargs)
        if not tower_conv_bias and kwargs.get("norm"):
            for tower in (self.cls_subnet, self.bbox_subnet):
                for layer in tower:
                    if isinstance(layer, nn.Conv2d):
                        layer.register_parameter("bias", None)
        self.iou_pred = nn.Conv2d(conv_dims[-1], num_anchors, kernel_size=3, stride=1, padding=1)
        nn.init.normal_(self.iou_pred.weight, mean=0, std=0.01)
        nn.init.constant_(self.iou_pred.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        return {
            **super().from_config(cfg, input_shape),
            "tower_conv_bias": cfg.MODEL.IMPROVED_BASELINE.TOWER_CONV_BIAS,
        }

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
