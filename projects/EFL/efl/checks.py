"""
Checks of a config against the machine, the datasets and the weights it names, run once before any process
starts, so that a wrong path or setting stops with a message that says what to fix.
"""
import contextlib
import json
import logging
import os
from typing import Dict, Iterator, List, Optional, Sequence
from urllib.parse import urlparse

import torch

from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultTrainer
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager

from .data import check_registered_dataset, registered_source, synthetic_spec_of
from .data.samplers import REPEAT_ROUNDINGS
from .engine import EFLCheckpointer
from .errors import ConfigError
from .losses import check_efl_hyperparameters
from .modeling import CLS_LOSSES

__all__ = ["ConfigError", "check_config", "naming_malformed_dataset_files"]


def check_config(
    cfg: CfgNode, eval_only: bool = False, resume: bool = False, num_processes: int = 1, trust_pickle: bool = False
) -> None:
    """
    Raise ConfigError unless ``cfg`` can run here: EFL hyper-parameters in range, the device present, a schedule
    and a batch that ``num_processes`` processes can share, every dataset it uses registered with its files in
    place (the embedded synthetic sets are generated when they are first loaded, not here), its evaluation images
    present (DATASETS.REGISTER sets), MODEL.RETINANET.NUM_CLASSES equal to the datasets' number of categories,
    training images to train on, and the weights named by MODEL.WEIGHTS readable and fitting the model (unless
    ``resume`` finds a checkpoint to start from instead), and an epoch-based schedule that can be resolved.
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
    if not eval_only:
        _check_schedule(cfg, num_processes)
        _check_epoch_schedule(cfg)
    test_names = list(cfg.DATASETS.TEST)
    train_names = [] if eval_only else list(cfg.DATASETS.TRAIN)
    records: Dict[str, List[Dict]] = {}
    with naming_malformed_dataset_files(train_names + test_names):
        for name in dict.fromkeys(train_names + test_names):
            _check_dataset_files(name)
            if registered_source(name) is not None:
                records[name] = check_registered_dataset(name, evaluation=name in test_names)
            _check_num_classes(name, cfg.MODEL.RETINANET.NUM_CLASSES)
        for name in train_names:
            _check_has_training_images(name, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS, records.get(name))
    if eval_only or cfg.MODEL.WEIGHTS:
        if not (resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))):
            _check_weights(cfg, trust_pickle)


@contextlib.contextmanager
def naming_malformed_dataset_files(dataset_names: Sequence[str]) -> Iterator[None]:
    """
    Turn a JSON error raised while the block loads or evaluates datasets (detectron2's LVIS and COCO loaders and
    evaluators do not say which file they were reading) into a ConfigError that names the file.
    """
    try:
        yield
    except json.JSONDecodeError as e:
        for name in dict.fromkeys(dataset_names):
            json_file = MetadataCatalog.get(name).get("json_file") if name in MetadataCatalog.list() else None
            if json_file and os.path.isfile(json_file):
                try:
                    with open(json_file) as f:
                        json.load(f)
                except json.JSONDecodeError as found:
                    raise ConfigError(f"dataset file {json_file} ('{name}') is not valid JSON: {found}") from None
        raise


def _check_schedule(cfg: CfgNode, num_processes: int) -> None:
    if cfg.SOLVER.MAX_ITER < 1:
        raise ConfigError(f"SOLVER.MAX_ITER must be at least 1 to train, got {cfg.SOLVER.MAX_ITER}")
    batch = DefaultTrainer.auto_scale_workers(cfg, num_processes).SOLVER.IMS_PER_BATCH
    if batch < 1 or batch % num_processes:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {batch} cannot be split evenly over {num_processes} processes "
            f"(--num-gpus x --num-machines): make it a multiple of {num_processes}"
        )


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


def _check_has_training_images(name: str, filter_empty: bool, records: Optional[List[Dict]]) -> None:
    if name.startswith(("lvis_", "coco_")) or synthetic_spec_of(name) is not None:
        # detectron2's own sets: their files were checked, loading them here would take a minute; the synthetic
        # sets are never empty (their spec is validated) and are generated only when first loaded
        return
    if records is None:
        records = DatasetCatalog.get(name)
    if not records:
        raise ConfigError(f"Dataset '{name}' has no images: check its annotation file")
    if filter_empty and not any(r.get("annotations") for r in records):
        raise ConfigError(
            f"Dataset '{name}' has no image with annotations, and DATALOADER.FILTER_EMPTY_ANNOTATIONS drops "
            "images without any: nothing would be left to train on"
        )


def _check_weights(cfg: CfgNode, trust_pickle: bool) -> None:
    """MODEL.WEIGHTS exists, can be read safely, and fits the model (built on the CPU, as each process will)."""
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        raise ConfigError("--eval-only needs the weights to evaluate: add MODEL.WEIGHTS /path/to/model.pth")
    path = urlparse(weights)._replace(query="").geturl()  # detectron2 reads "?matching_heuristics=True"
    if "://" in path:
        try:
            path = PathManager.get_local_path(path)  # downloads once, here, rather than in every process
        except Exception as e:
            raise ConfigError(f"cannot fetch MODEL.WEIGHTS {weights}: {e}") from None
    if not os.path.isfile(path):
        raise ConfigError(f"MODEL.WEIGHTS file not found: {path} (give a path, a detectron2:// URL or \"\")")
    cpu_cfg = cfg.clone()
    cpu_cfg.defrost()
    cpu_cfg.MODEL.DEVICE = "cpu"
    cpu_cfg.DATASETS.TRAIN = ()  # the frequency groups of the training set are not part of the weights
    model = build_model(cpu_cfg)
    checkpointer = EFLCheckpointer(
        model, allow_partial=cfg.MODEL.ALLOW_PARTIAL_WEIGHTS, trust_pickle=trust_pickle, save_to_disk=False
    )
    logging.disable(logging.WARNING)  # each process says what it loads; this is only the check
    try:
        checkpointer.load(weights, checkpointables=[])
    finally:
        logging.disable(logging.NOTSET)
