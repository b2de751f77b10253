"""
The improved baseline's neck: detectron2's FPN with P6/P7 taken from the C5 lateral, and padding to any multiple.
"""
from typing import List, Tuple

import fvcore.nn.weight_init as weight_init
from torch import Tensor, nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN
from detectron2.modeling.backbone.resnet import build_resnet_backbone

__all__ = ["LateralP6P7", "PaddedFPN", "build_retinanet_resnet_fpn_lateral_p6p7_backbone"]


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
