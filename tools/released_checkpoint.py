"""
Conversion of the EFL authors' released checkpoints (United-Perception / EOD, improved baseline on LVIS v1) to this
project's ImprovedRetinaNet (configs/LVISv1/released_improved_R_*.yaml), for convert_released_checkpoint.py. Torch
only.

Key mapping (official -> ours):
  backbone.layer0.{0,1}  or  backbone.{conv1,bn1}      -> backbone.bottom_up.stem.conv1{,.norm}
  backbone.layer{n}.{i}.conv{k} / bn{k}                 -> backbone.bottom_up.res{n+1}.{i}.conv{k}{,.norm}
  backbone.layer{n}.0.downsample.{0,1}                  -> backbone.bottom_up.res{n+1}.0.shortcut{,.norm}
  neck.c{l}_lateral / neck.p{l}_conv (l = 3, 4, 5)      -> backbone.fpn_lateral{l} / backbone.fpn_output{l}
  neck.p6_conv / neck.p7_conv                           -> backbone.top_block.p6 / .p7
  roi_head.cls_subnet.* / roi_head.box_subnet.*         -> head.cls_subnet.* / head.bbox_subnet.*
  roi_head.cls_subnet_pred / box_subnet_pred / iou_pred -> head.cls_score / head.bbox_pred / head.iou_pred
  post_process.cls_loss.{pos_grad,neg_grad,pos_neg}     -> cls_loss.*
The released towers' convs have no bias, like ours in these configs (MODEL.IMPROVED_BASELINE.TOWER_CONV_BIAS False).
``*.num_batches_tracked`` is dropped.
"""
import re
from typing import Dict, Tuple

import torch
from torch import Tensor

__all__ = ["ConversionError", "convert_state_dict", "detect_layout", "unwrap"]

LAYOUTS = ("auto", "anchor-first", "class-first")
NUM_ANCHORS = 2

_RULES = [
    (r"backbone\.layer0\.0\.weight", "backbone.bottom_up.stem.conv1.weight"),
    (r"backbone\.layer0\.1\.(.+)", r"backbone.bottom_up.stem.conv1.norm.\1"),
    (r"backbone\.layer(\d)\.(\d+)\.conv(\d)\.weight", lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight"),
    (r"backbone\.layer(\d)\.(\d+)\.bn(\d)\.(.+)", lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"),
    (r"backbone\.layer(\d)\.0\.downsample\.0\.weight", lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.0.shortcut.weight"),
    (r"backbone\.layer(\d)\.0\.downsample\.1\.(.+)", lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.0.shortcut.norm.{m[2]}"),
    (r"neck\.c(\d)_lateral\.(weight|bias)", r"backbone.fpn_lateral\1.\2"),
    (r"neck\.p([345])_conv\.(weight|bias)", r"backbone.fpn_output\1.\2"),
    (r"neck\.p([67])_conv\.(weight|bias)", r"backbone.top_block.p\1.\2"),
    (r"roi_head\.cls_subnet\.(\d+)\.(weight|bias)", r"head.cls_subnet.\1.\2"),
    (r"roi_head\.box_subnet\.(\d+)\.(weight|bias)", r"head.bbox_subnet.\1.\2"),
    (r"roi_head\.cls_subnet_pred\.(weight|bias)", r"head.cls_score.\1"),
    (r"roi_head\.box_subnet_pred\.(weight|bias)", r"head.bbox_pred.\1"),
    (r"roi_head\.iou_pred\.(weight|bias)", r"head.iou_pred.\1"),
    (r"post_process\.cls_loss\.(pos_grad|neg_grad|pos_neg)", r"cls_loss.\1"),
]
# The 0.1.0-era files also register the stem as backbone.conv1 / backbone.bn1, identical to layer0.0 / layer0.1.
_STEM_ALIASES = {"backbone.conv1.": "backbone.layer0.0.", "backbone.bn1.": "backbone.layer0.1."}


class ConversionError(ValueError):
    """A released checkpoint that cannot be converted; the message names the key or problem."""


def unwrap(checkpoint) -> Dict[str, Tensor]:
    """The model state_dict of a released file: under "model" or "state_dict", or bare; without "module."."""
    state = checkpoint
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConversionError("no state_dict found (looked under 'model', 'state_dict' and at the top level)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _resolve_stem_aliases(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    resolved = {}
    for key, value in state.items():
        for alias, canonical in _STEM_ALIASES.items():
            if key.startswith(alias):
                twin = canonical + key[len(alias):]
                if twin in state and not torch.equal(state[twin], value):
                    raise ConversionError(f"{key} differs from its twin {twin}: which stem is right is unclear")
                key = twin
        resolved.setdefault(key, value)
    return resolved


def detect_layout(cls_bias: Tensor, num_anchors: int = NUM_ANCHORS) -> Tuple[str, float, float]:
    """
    Whether classification channels are anchor-first (a*C + c) or class-first (c*A + a). The anchors of a class
    share its prior, so in the right view the per-anchor rows correlate. Returns (layout, corr anchor-first,
    corr class-first).
    """
    anchor_first = cls_bias.reshape(num_anchors, -1)
    class_first = cls_bias.reshape(-1, num_anchors).t()
    corr = [float(torch.corrcoef(v.double())[0, 1].nan_to_num(-1.0)) for v in (anchor_first, class_first)]
    return ("anchor-first" if corr[0] >= corr[1] else "class-first"), corr[0], corr[1]


def _class_first_to_anchor_first(t: Tensor, num_anchors: int) -> Tensor:
    """(C*A, ...) channels c*A + a -> a*C + c."""
    return t.reshape(-1, num_anchors, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def convert_state_dict(state: Dict[str, Tensor], layout: str = "auto") -> Tuple[Dict[str, Tensor], str]:
    """
    Map a released state_dict (already unwrapped) to ImprovedRetinaNet's keys.

    Returns:
        the converted state_dict and the classification layout used ("anchor-first" or "class-first").
    Raises:
        ConversionError: naming any key that has no place in ImprovedRetinaNet.
    """
    if layout not in LAYOUTS:
        raise ConversionError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    state = {k: v for k, v in _resolve_stem_aliases(state).items() if not k.endswith(".num_batches_tracked")}
    converted: Dict[str, Tensor] = {}
    for key, value in state.items():
        for pattern, replacement in _RULES:
            match = re.fullmatch(pattern, key)
            if match:
                new_key = replacement(match) if callable(replacement) else match.expand(replacement)
                converted[new_key] = value.clone()
                break
        else:
            raise ConversionError(f"no place for released key {key!r} {tuple(value.shape)} in ImprovedRetinaNet")

    if "head.cls_score.bias" not in converted:
        raise ConversionError("released key roi_head.cls_subnet_pred.bias is missing: not an improved-baseline file")
    if layout == "auto":
        layout = detect_layout(converted["head.cls_score.bias"])[0]
    if layout == "class-first":
        for key in ("head.cls_score.weight", "head.cls_score.bias"):
            converted[key] = _class_first_to_anchor_first(converted[key], NUM_ANCHORS)
    return converted, layout
