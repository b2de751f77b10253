"""Config keys of the EFL project, and a yacs config that reads them with messages instead of tracebacks."""
import difflib
import os
from typing import Iterator, List, Sequence, Tuple

import yaml

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .errors import ConfigError

__all__ = ["EFLCfgNode", "add_efl_config", "load_config"]


def add_efl_config(cfg: CN) -> None:
    """
    Add the ``MODEL.EFL`` node (the hyper-parameters of Equalized Focal Loss, used by every EFL detector; the
    defaults are the paper's), ``MODEL.IMPROVED_BASELINE``, the few keys the improved baseline adds elsewhere, and
    the epoch-based schedule (``SOLVER.MAX_EPOCHS`` ..., ``DATALOADER.REPEAT_ROUNDING``).
    """
    cfg.MODEL.EFL = CN()
    # gamma_b: the focusing factor every class starts from (EFL with pos_neg = 1 is focal loss with it)
    cfg.MODEL.EFL.GAMMA_B = 2.0
    # s: how far a class's focusing factor rises as its positive/negative gradient ratio falls
    cfg.MODEL.EFL.SCALE = 8.0
    # alpha: the weight of positive cells (1 - alpha for negative ones), as in focal loss
    cfg.MODEL.EFL.ALPHA = 0.25
    # the classification loss of every EFL detector: "efl", "eqfl" (Equalized Quality Focal Loss, ImprovedRetinaNet
    # only: its positive targets are the predicted boxes' IoUs) or "focal" (EFL with s = 0, which is exactly sigmoid
    # focal loss with RETINANET.FOCAL_LOSS_*, keeping the statistics for comparison)
    cfg.MODEL.EFL.LOSS = "efl"
    # which code computes it: "auto" (Triton on CUDA, chunked PyTorch elsewhere), "triton" or "torch";
    # $EFL_IMPLEMENTATION overrides it
    cfg.MODEL.EFL.IMPLEMENTATION = "auto"
    # the paper's ablations: False uses gamma_b as every class's focusing factor / 1 as every class's weight
    cfg.MODEL.EFL.FOCUSING_FACTOR = True
    cfg.MODEL.EFL.WEIGHTING_FACTOR = True
    # start the statistics afresh after loading MODEL.WEIGHTS (not on --resume): for fine-tuning weights that were
    # trained on another dataset, whose per-class statistics mean nothing for this one
    cfg.MODEL.EFL.RESET_STATISTICS = False

    # The paper's improved one-stage baseline (META_ARCHITECTURE "ImprovedRetinaNet"); each piece can be switched
    # off for ablations.
    cfg.MODEL.IMPROVED_BASELINE = CN()
    # ATSS candidates per level and box; 0 uses RetinaNet's IoU matching (RETINANET.IOU_THRESHOLDS)
    cfg.MODEL.IMPROVED_BASELINE.ATSS_TOPK = 18
    # predict each anchor's IoU (BCE loss) and multiply its sigmoid into the test scores
    cfg.MODEL.IMPROVED_BASELINE.IOU_BRANCH = True
    # weight the GIoU box loss by the IoU targets and normalise by their sum (else / number of positives)
    cfg.MODEL.IMPROVED_BASELINE.IOU_WEIGHTED_BOX_LOSS = True
    # False: the head towers' convs that a norm follows have no bias (the norm's shift makes it redundant; the
    # official code and its released models have none)
    cfg.MODEL.IMPROVED_BASELINE.TOWER_CONV_BIAS = True

    # pad input images to a multiple of this (0: the FPN's coarsest stride, detectron2's default); read by
    # build_retinanet_resnet_fpn_lateral_p6p7_backbone (the released EFL models pad to 64)
    cfg.MODEL.FPN.SIZE_DIVISIBILITY = 0
    # library of the test-time resize: "pil" (detectron2's) or "opencv" (cv2.INTER_LINEAR, the released EFL models')
    cfg.INPUT.TEST_RESIZE_BACKEND = "pil"

    # Epoch-based schedules (efl/engine/schedule.py). An epoch is one pass over the training list as the sampler
    # enlarges it; train_net.py resolves these into SOLVER.MAX_ITER, STEPS and WARMUP_ITERS when training starts.
    # the number of epochs; 0 keeps SOLVER.MAX_ITER, STEPS and WARMUP_ITERS as given
    cfg.SOLVER.MAX_EPOCHS = 0
    # the LR steps, in epochs (fractions allowed), with MAX_EPOCHS
    cfg.SOLVER.EPOCH_STEPS = ()
    # the warm-up, in epochs (a float), with MAX_EPOCHS
    cfg.SOLVER.WARMUP_EPOCHS = 0.0
    # how RepeatFactorTrainingSampler makes whole repeats of each image's factor r: "stochastic" (detectron2's:
    # floor(r), plus one with probability r - floor(r), each epoch) or "ceil" (the official EFL code's: ceil(r))
    cfg.DATALOADER.REPEAT_ROUNDING = "stochastic"
    # Load MODEL.WEIGHTS (or a checkpoint to resume) even when it does not fit the model: keys the model lacks are
    # ignored, and parameters the weights lack or hold in another shape keep their initial values. For fine-tuning
    # from a detector trained on other classes. Without it, only weights that fill the model exactly load (the EFL
    # statistics excepted), except ImageNet backbone files (detectron2's .pkl, matched by name heuristics).
    cfg.MODEL.ALLOW_PARTIAL_WEIGHTS = False
    # Datasets to register under any name, each (name, format, json_file, image_root) with format "lvis" or "coco":
    # e.g. (("mine_train", "lvis", "/data/mine/train.json", "/data/mine/images"), ...). See README, "Your own data".
    cfg.DATASETS.REGISTER = ()

    cfg.register_renamed_key("MODEL.IMPROVED_BASELINE.CLS_LOSS", "MODEL.EFL.LOSS")


class EFLCfgNode(CN):
    """
    detectron2's CfgNode that accepts an int for a float key (``MODEL.EFL.SCALE 4``), and stops with a
    :class:`ConfigError` that names the key for an unknown key (with the closest known ones) or a renamed one.
    """

    def merge_from_other_cfg(self, cfg_other: CN) -> None:
        # Every merge of a file ends here (merge_from_file, including its version upgrades).
        for full_key, value in _leaves(cfg_other):
            value = self._decode_cfg_value(value)  # as yacs's merge does, e.g. "(640, 672)" to a tuple
            _set(cfg_other, full_key, _checked_value(full_key, value, self._lookup(full_key)))
        super().merge_from_other_cfg(cfg_other)

    def merge_from_list(self, cfg_list: List) -> None:
        if len(cfg_list) % 2:
            words = " ".join(map(str, cfg_list))
            raise ConfigError(f"the config overrides must be KEY VALUE pairs, got an odd number of words: {words}")
        checked = []
        for full_key, value in zip(cfg_list[0::2], cfg_list[1::2]):
            checked += [full_key, _checked_value(full_key, self._decode_cfg_value(value), self._lookup(full_key))]
        super().merge_from_list(checked)

    def _lookup(self, full_key: str):
        """The current value of ``full_key`` (None for a key yacs skips); ConfigError when unknown or renamed."""
        if self.key_is_renamed(full_key):
            new_key = self.__dict__[CN.RENAMED_KEYS][full_key]
            new_key = new_key[0] if isinstance(new_key, tuple) else new_key
            raise ConfigError(f"config key {full_key} was renamed to {new_key}: use {new_key}")
        node = self
        for subkey in full_key.split("."):
            if not isinstance(node, CN) or subkey not in node:
                if self.key_is_deprecated(full_key) or (isinstance(node, CN) and node.is_new_allowed()):
                    return None
                close = difflib.get_close_matches(full_key, [k for k, _ in _leaves(self)], n=3, cutoff=0.7)
                hint = f" (did you mean {' or '.join(close)}?)" if close else ""
                raise ConfigError(f"unknown config key {full_key}{hint}")
            node = node[subkey]
        return node


def _leaves(node: CN, prefix: str = "") -> Iterator[Tuple[str, object]]:
    for key, value in node.items():
        if isinstance(value, CN):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _set(node: CN, full_key: str, value) -> None:
    *path, last = full_key.split(".")
    for key in path:
        node = node[key]
    node[last] = value


def _checked_value(full_key: str, value, current):
    """``value`` as yacs will take it for a key whose value is ``current``, or an int made a float for a float key."""
    if isinstance(current, CN):
        raise ConfigError(f"{full_key} is a group of keys, not a value: set one of {', '.join(current)} in it")
    if current is None or type(value) is type(current) or {type(value), type(current)} == {list, tuple}:
        return value
    if type(current) is float and type(value) is int:
        return float(value)
    raise ConfigError(f"{full_key} takes a {type(current).__name__} such as {current!r}, got {value!r}")


def load_config(config_file: str, opts: Sequence[str] = ()) -> EFLCfgNode:
    """
    detectron2's defaults with the EFL keys, ``config_file`` (yaml, with ``_BASE_``) and then ``opts``
    (KEY VALUE ...) merged in, frozen.

    Raises:
        ConfigError: with a one-line message, for a missing or unparsable file, an unknown or renamed key, or a
            value of the wrong type (an int for a float key is accepted).
    """
    if not config_file:
        raise ConfigError("no config file: give --config-file, e.g. configs/LVISv1/retinanet_R_50_FPN_24ep_efl.yaml")
    if not os.path.isfile(config_file):
        raise ConfigError(f"config file not found: {config_file}")
    defaults = get_cfg()
    add_efl_config(defaults)
    cfg = EFLCfgNode(defaults)  # every node, also those added by add_efl_config, of the one class yacs accepts
    for registry in (CN.RENAMED_KEYS, CN.DEPRECATED_KEYS):
        cfg.__dict__[registry] = defaults.__dict__[registry]
    try:
        cfg.merge_from_file(config_file)
    except (yaml.YAMLError, OSError) as e:
        raise ConfigError(f"cannot read config file {config_file}: {' '.join(str(e).split())}") from None
    except (ValueError, KeyError, AssertionError) as e:  # yacs's type and version errors
        raise ConfigError(f"{config_file}: {' '.join(str(e.args[0] if e.args else e).split())}") from None
    try:
        cfg.merge_from_list(list(opts))
    except (ValueError, KeyError, AssertionError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"command line: {' '.join(str(e.args[0] if e.args else e).split())}") from None
    cfg.freeze()
    return cfg
