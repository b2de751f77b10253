"""
Checks of a config against the machine and the datasets it names, run before anything is built, so that a
wrong path or setting stops with a message that says what to fix.
"""
import os
from typing import List

import torch

from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from .data import synthetic_spec_of
from .data.samplers import REPEAT_ROUNDINGS
from .losses import check_efl_hyperparameters
from .modeling import CLS_LOSSES

__all__ = ["ConfigError", "check_config"]


class ConfigError(ValueError):
    """A config that cannot run as given; the message says what to change."""


def check_config(cfg: CfgNode, eval_only: bool = False) -> None:
    """
    Raise ConfigError unless ``cfg`` can run here: EFL hyper-parameters in range, the device present, every
    dataset it uses registered with its files in place (the embedded synthetic sets are generated when they are
    first loaded, not here), MODEL.RETINANET.NUM_CLASSES equal to the datasets' number of categories, training images to train on,
    the weights named by MODEL.WEIGHTS (needed for ``eval_only``), and an epoch-based schedule that can be resolved.
    """
    try:
        check_efl_hyperparameters(cfg.MODEL.EFL.GAMMA_B, cfg.MODEL.EFL.SCALE, cfg.MODEL.EFL.ALPHA)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _check_loss(cfg.MODEL.EFL.LOSS, cfg.MODEL.META_ARCHITECTURE)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"MODEL.DEVICE is '{cfg.MODEL.DEVICE}' but no CUDA GPU is visible: add MODEL.DEVICE cpu "
            "to the command line to run on the CPU"
        )
    names = list(cfg.DATASETS.TEST) if eval_only else list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    for name in dict.fromkeys(names):
        _check_dataset_files(name)
        _check_num_classes(name, cfg.MODEL.RETINANET.NUM_CLASSES)
    if not eval_only:
        for name in cfg.DATASETS.TRAIN:
            _check_has_training_images(name, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        _check_epoch_schedule(cfg)
    if eval_only or cfg.MODEL.WEIGHTS:
        _check_weights(cfg.MODEL.WEIGHTS)


def _check_loss(loss: str, meta_architecture: str) -> None:
    if loss not in CLS_LOSSES:
        raise ConfigError(f"MODEL.EFL.LOSS must be one of {', '.join(CLS_LOSSES)}, got {loss!r}")
    if loss == "eqfl" and meta_architecture != "ImprovedRetinaNet":
        raise ConfigError(
            "MODEL.EFL.LOSS 'eqfl' needs the IoU of each positive anchor's predicted box, which only "
            f"ImprovedRetinaNet computes; MODEL.META_ARCHITECTURE is {meta_architecture!r}"
        )


def _check_epoch_schedule(cfg: CfgNode) -> None:
    if cfg.DATALOADER.REPEAT_ROUNDING not in REPEAT_ROUNDINGS:
        raise ConfigError(
            f"DATALOADER.REPEAT_ROUNDING must be one of {', '.join(REPEAT_ROUNDINGS)}, "
            f"got {cfg.DATALOADER.REPEAT_ROUNDING!r}"
        )
    solver = cfg.SOLVER
    epochs = solver.MAX_EPOCHS
    if epochs < 0:
        raise ConfigError(f"SOLVER.MAX_EPOCHS must be 0 (count in iterations) or more, got {epochs}")
    if epochs == 0:
        return
    if cfg.DATALOADER.SAMPLER_TRAIN not in ("TrainingSampler", "RepeatFactorTrainingSampler"):
        raise ConfigError(
            f"SOLVER.MAX_EPOCHS needs a sampler with epochs: DATALOADER.SAMPLER_TRAIN TrainingSampler or "
            f"RepeatFactorTrainingSampler, got {cfg.DATALOADER.SAMPLER_TRAIN!r} (or set SOLVER.MAX_EPOCHS 0 and "
            "SOLVER.MAX_ITER)"
        )
    steps = list(solver.EPOCH_STEPS)
    if any(not 0 < e < epochs for e in steps) or steps != sorted(steps):
        raise ConfigError(f"SOLVER.EPOCH_STEPS must increase within (0, SOLVER.MAX_EPOCHS = {epochs}), got {steps}")
    if not 0 <= solver.WARMUP_EPOCHS <= epochs:
        raise ConfigError(f"SOLVER.WARMUP_EPOCHS must lie in [0, {epochs}], got {solver.WARMUP_EPOCHS}")
    # A count in iterations given as well (say SOLVER.MAX_ITER 1000 on the command line for a short run) would be
    # replaced without a word: stop instead.
    default = get_cfg().SOLVER
    for key in ("MAX_ITER", "STEPS", "WARMUP_ITERS"):
        if solver[key] != default[key]:
            raise ConfigError(
                f"SOLVER.MAX_EPOCHS ({epochs}) sets SOLVER.MAX_ITER, STEPS and WARMUP_ITERS from the training set, "
                f"but SOLVER.{key} is given too ({solver[key]}): to count in iterations add SOLVER.MAX_EPOCHS 0, "
                f"to count in epochs leave SOLVER.{key} at its default ({default[key]}) and set SOLVER.EPOCH_STEPS / "
                "SOLVER.WARMUP_EPOCHS"
            )


def _datasets_root() -> str:
    root = os.getenv("DETECTRON2_DATASETS", "datasets")
    return f"$DETECTRON2_DATASETS ({root!r}, i.e. {os.path.abspath(os.path.expanduser(root))})"


def _check_dataset_files(name: str) -> None:
    if name not in DatasetCatalog.list():
        raise ConfigError(
            f"Dataset '{name}' is not registered. Built-in LVIS v1 names are lvis_v1_train and "
            "lvis_v1_val; the embedded synthetic set is efl_synth_lt_train / efl_synth_lt_val."
        )
    if synthetic_spec_of(name) is not None:
        return  # generated where it is first loaded
    metadata = MetadataCatalog.get(name)
    json_file = metadata.get("json_file")
    image_root = metadata.get("image_root")
    missing: List[str] = []
    if json_file and not os.path.isfile(json_file):
        missing.append(json_file)
    image_dirs = [image_root] if image_root else []
    if metadata.get("evaluator_type") == "lvis" and name.startswith("lvis_"):
        # detectron2's LVIS sets take each image's folder (train2017 or val2017) from its coco_url
        image_dirs = [os.path.join(image_root, "train2017"), os.path.join(image_root, "val2017")]
    missing += [d for d in image_dirs if not os.path.isdir(d)]
    if not missing:
        return
    where = ""
    if name.startswith("lvis_"):
        where = (
            f" Put the LVIS annotations at {_datasets_root()}/lvis/lvis_v1_{{train,val}}.json and the "
            "COCO 2017 images in $DETECTRON2_DATASETS/coco/{train2017,val2017}, or point "
            "DETECTRON2_DATASETS at the folder that holds lvis/ and coco/."
        )
    elif name.startswith("coco_"):
        where = (
            f" Put COCO 2017 at {_datasets_root()}/coco/ (annotations/, train2017/, val2017/), or point "
            "DETECTRON2_DATASETS at the folder that holds coco/."
        )
    raise ConfigError(f"Dataset '{name}' is missing {', '.join(missing)}.{where}")


def _check_num_classes(name: str, num_classes: int) -> None:
    metadata = MetadataCatalog.get(name)
    classes = metadata.get("thing_classes")
    if classes is None:
        DatasetCatalog.get(name)  # custom loaders name their classes when they load
        classes = metadata.get("thing_classes")
    if classes is not None and len(classes) != num_classes:
        raise ConfigError(
            f"MODEL.RETINANET.NUM_CLASSES is {num_classes} but dataset '{name}' has {len(classes)} "
            f"categories: set MODEL.RETINANET.NUM_CLASSES {len(classes)}"
        )


def _check_has_training_images(name: str, filter_empty: bool) -> None:
    if name.startswith(("lvis_", "coco_")) or synthetic_spec_of(name) is not None:
        # detectron2's own sets: their files were checked, loading them here would take a minute; the synthetic
        # sets are never empty (their spec is validated) and are generated only when first loaded
        return
    records = DatasetCatalog.get(name)
    if not records:
        raise ConfigError(f"Dataset '{name}' has no images: check its annotation file")
    if filter_empty and not any(r.get("annotations") for r in records):
        raise ConfigError(
            f"Dataset '{name}' has no image with annotations, and DATALOADER.FILTER_EMPTY_ANNOTATIONS drops "
            "images without any: nothing would be left to train on"
        )


def _check_weights(weights: str) -> None:
    if not weights:
        raise ConfigError("--eval-only needs the weights to evaluate: add MODEL.WEIGHTS /path/to/model.pth")
    if "://" not in weights and not os.path.isfile(weights):
        raise ConfigError(f"MODEL.WEIGHTS file not found: {weights} (give a path, a detectron2:// URL or \"\")")
