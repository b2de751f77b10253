"""
Checks of a config against the machine, the datasets and the weights it names, run once before any process
starts, so that a wrong path or setting stops with a message that says what to fix. The same checks serve both
config systems: :func:`check_config` (yacs) and :func:`check_lazy_config` (LazyConfig) read their settings and
call the helpers below with plain values; messages name the settings as the config system writes them
(efl.config_keys).
"""
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence
from urllib.parse import urlparse

import torch
from omegaconf import DictConfig

from detectron2.config import CfgNode, get_cfg, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import DefaultTrainer
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager

from .config_keys import LAZY_KEYS, YACS_KEYS, ConfigKeys
from .data import check_registered_dataset, naming_malformed_dataset_files, registered_source, synthetic_spec_of
from .data.samplers import REPEAT_ROUNDINGS, RepeatFactorSampler
from .engine import EFLCheckpointer
from .errors import ConfigError
from .lazy_config import calls, lazy_dataset_names, lazy_lr_schedule
from .losses import check_efl_hyperparameters
from .modeling import CLS_LOSSES

__all__ = ["ConfigError", "check_config", "check_lazy_config"]


def check_config(
    cfg: CfgNode, eval_only: bool = False, resume: bool = False, num_processes: int = 1, trust_pickle: bool = False
) -> None:
    """
    Raise ConfigError unless ``cfg`` (yacs) can run here: EFL hyper-parameters in range, the device present, a
    schedule and a batch that ``num_processes`` processes can share, every dataset it uses registered with its files
    in place (the embedded synthetic sets are generated when they are first loaded, not here), its evaluation images
    present (DATASETS.REGISTER sets), MODEL.RETINANET.NUM_CLASSES equal to the datasets' number of categories,
    training images to train on, and the weights named by MODEL.WEIGHTS readable and fitting the model (unless
    ``resume`` finds a checkpoint to start from instead), and an epoch-based schedule that can be resolved.
    """
    keys = YACS_KEYS
    try:
        check_efl_hyperparameters(cfg.MODEL.EFL.GAMMA_B, cfg.MODEL.EFL.SCALE, cfg.MODEL.EFL.ALPHA)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _check_loss(cfg.MODEL.EFL.LOSS, cfg.MODEL.META_ARCHITECTURE)
    _check_device(cfg.MODEL.DEVICE, keys)
    if not eval_only:
        _check_max_iter(cfg.SOLVER.MAX_ITER, keys)
        _check_batch(DefaultTrainer.auto_scale_workers(cfg, num_processes).SOLVER.IMS_PER_BATCH, num_processes, keys)
        _check_epoch_schedule(cfg)
    _check_datasets(
        [] if eval_only else list(cfg.DATASETS.TRAIN),
        list(cfg.DATASETS.TEST),
        cfg.MODEL.RETINANET.NUM_CLASSES,
        cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        keys,
    )
    if (eval_only or cfg.MODEL.WEIGHTS) and not _resumes(cfg.OUTPUT_DIR, resume):
        _check_weights(lambda: _cpu_model(cfg), cfg.MODEL.WEIGHTS, cfg.MODEL.ALLOW_PARTIAL_WEIGHTS, trust_pickle, keys)


def check_lazy_config(
    cfg: DictConfig, eval_only: bool = False, resume: bool = False, num_processes: int = 1, trust_pickle: bool = False
) -> None:
    """
    Raise ConfigError unless the LazyConfig ``cfg`` can run here: :func:`check_config`'s checks, where a LazyConfig
    holds what they read: the device (train.device); the length (train.max_iter, or train.max_epochs with its
    sampler and lr_multiplier) and the batch (dataloader.train.total_batch_size); the datasets of its loaders where
    they are named (``get_detection_dataset_dicts(names=...)``) against model.num_classes; and the weights of
    train.init_checkpoint, read and fitted to the model built on the CPU.
    """
    keys = LAZY_KEYS
    train = cfg.train
    _check_device(str(train.get("device", "cuda")), keys)
    if not eval_only:
        _check_batch(cfg.dataloader.train.get("total_batch_size"), num_processes, keys)
        _check_lazy_schedule(cfg)
    train_names, test_names = lazy_dataset_names(cfg, eval_only)
    num_classes = cfg.model.get("num_classes")
    dataset = cfg.dataloader.train.get("dataset") if train_names else None
    filter_empty = dataset.get("filter_empty", True) if dataset is not None else True
    _check_datasets(train_names, test_names, num_classes if isinstance(num_classes, int) else None, filter_empty, keys)
    weights = train.get("init_checkpoint") or ""
    if (eval_only or weights) and not _resumes(train.output_dir, resume):
        allow_partial = bool(train.get("allow_partial_weights", False))
        _check_weights(lambda: _cpu_lazy_model(cfg), weights, allow_partial, trust_pickle, keys)


def _resumes(output_dir: str, resume: bool) -> bool:
    """Whether --resume will start from a checkpoint of ``output_dir`` (rather than from the weights)."""
    return resume and os.path.isfile(os.path.join(output_dir, "last_checkpoint"))


def _check_device(device: str, keys: ConfigKeys) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"{keys.device} is '{device}' but no CUDA GPU is visible: add {keys.setting(keys.device, 'cpu')} "
            "to the command line to run on the CPU"
        )


def _check_max_iter(max_iter, keys: ConfigKeys) -> None:
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"{keys.max_iter} must be at least 1 to train, got {max_iter}")


def _check_batch(batch, num_processes: int, keys: ConfigKeys) -> None:
    if not isinstance(batch, int) or batch < 1 or batch % num_processes:
        raise ConfigError(
            f"{keys.batch_size} {batch} cannot be split evenly over {num_processes} processes "
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


def _check_epochs(max_epochs, epoch_steps: Sequence, warmup_epochs, keys: ConfigKeys) -> None:
    """An epoch-based schedule: steps increasing inside the run, a warm-up no longer than it."""
    if not isinstance(max_epochs, (int, float)) or max_epochs < 0:
        raise ConfigError(f"{keys.max_epochs} must be 0 (count in iterations) or more, got {max_epochs}")
    steps = list(epoch_steps)
    if any(not 0 < e < max_epochs for e in steps) or steps != sorted(steps):
        raise ConfigError(f"{keys.epoch_steps} must increase within (0, {keys.max_epochs} = {max_epochs}), got {steps}")
    if not 0 <= warmup_epochs <= max_epochs:
        raise ConfigError(f"{keys.warmup_epochs} must lie in [0, {max_epochs}], got {warmup_epochs}")


def _check_epoch_schedule(cfg: CfgNode) -> None:
    if cfg.DATALOADER.REPEAT_ROUNDING not in REPEAT_ROUNDINGS:
        raise ConfigError(
            f"DATALOADER.REPEAT_ROUNDING must be one of {', '.join(REPEAT_ROUNDINGS)}, "
            f"got {cfg.DATALOADER.REPEAT_ROUNDING!r}"
        )
    solver = cfg.SOLVER
    epochs = solver.MAX_EPOCHS
    if epochs == 0:
        return
    _check_epochs(epochs, solver.EPOCH_STEPS, solver.WARMUP_EPOCHS, YACS_KEYS)
    if cfg.DATALOADER.SAMPLER_TRAIN not in ("TrainingSampler", "RepeatFactorTrainingSampler"):
        raise ConfigError(
            f"SOLVER.MAX_EPOCHS needs a sampler with epochs: DATALOADER.SAMPLER_TRAIN TrainingSampler or "
            f"RepeatFactorTrainingSampler, got {cfg.DATALOADER.SAMPLER_TRAIN!r} (or set SOLVER.MAX_EPOCHS 0 and "
            "SOLVER.MAX_ITER)"
        )
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


def _check_lazy_schedule(cfg: DictConfig) -> None:
    """train.max_iter, or train.max_epochs with a sampler that has epochs and an lr_multiplier it can set."""
    train, sampler = cfg.train, cfg.dataloader.train.get("sampler")
    if calls(sampler, RepeatFactorSampler):
        rounding = sampler.get("rounding", "stochastic")
        if rounding not in REPEAT_ROUNDINGS:
            raise ConfigError(
                f"dataloader.train.sampler.rounding must be one of {', '.join(REPEAT_ROUNDINGS)}, got {rounding!r}"
            )
    max_epochs = train.get("max_epochs")
    if not max_epochs:
        _check_max_iter(train.get("max_iter"), LAZY_KEYS)
        return
    steps, warmup = list(train.get("epoch_steps") or ()), train.get("warmup_epochs") or 0.0
    _check_epochs(max_epochs, steps, warmup, LAZY_KEYS)
    epochs = calls(sampler, RepeatFactorSampler) or calls(sampler, TrainingSampler, exactly=True)
    if sampler is not None and not epochs:
        raise ConfigError(
            "train.max_epochs needs a sampler with epochs: dataloader.train.sampler TrainingSampler (the default) or "
            "efl.data.samplers.RepeatFactorSampler (repeat factors with ceil or stochastic rounding); or count in "
            "iterations with train.max_epochs=null and train.max_iter"
        )
    schedule = lazy_lr_schedule(cfg)
    if steps and schedule.multistep is None:
        raise ConfigError(
            "train.epoch_steps needs lr_multiplier to be a MultiStepParamScheduler, or a WarmupParamScheduler of one, "
            "whose milestones they set"
        )
    if schedule.multistep is not None:
        values = list(schedule.multistep.get("values") or ())
        if len(values) != len(steps) + 1:
            raise ConfigError(
                f"{schedule.multistep_key}.values has {len(values)} values, so train.epoch_steps needs "
                f"{len(values) - 1} epochs, got {steps}"
            )
    if warmup and schedule.warmup is None:
        raise ConfigError("train.warmup_epochs needs lr_multiplier to be a WarmupParamScheduler, whose length it sets")


def _check_datasets(
    train_names: List[str], test_names: List[str], num_classes: Optional[int], filter_empty: bool, keys: ConfigKeys
) -> None:
    """Every dataset registered with its files in place and ``num_classes`` categories; images to train on."""
    records: Dict[str, List[Dict]] = {}
    with naming_malformed_dataset_files(train_names + test_names):
        for name in dict.fromkeys(train_names + test_names):
            _check_dataset_files(name, keys)
            if registered_source(name) is not None:
                records[name] = check_registered_dataset(name, evaluation=name in test_names)
            if num_classes is not None:
                _check_num_classes(name, num_classes, keys)
        for name in train_names:
            _check_has_training_images(name, filter_empty, records.get(name), keys)


def _datasets_root() -> str:
    root = os.getenv("DETECTRON2_DATASETS", "datasets")
    return f"$DETECTRON2_DATASETS ({root!r}, i.e. {os.path.abspath(os.path.expanduser(root))})"


def _check_dataset_files(name: str, keys: ConfigKeys) -> None:
    if name not in DatasetCatalog.list():
        raise ConfigError(
            f"Dataset '{name}' is not registered. Built-in LVIS v1 names are lvis_v1_train and "
            "lvis_v1_val; the embedded synthetic set is efl_synth_lt_train / efl_synth_lt_val; register your own "
            f"with {keys.register}."
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


def _check_num_classes(name: str, num_classes: int, keys: ConfigKeys) -> None:
    metadata = MetadataCatalog.get(name)
    classes = metadata.get("thing_classes")
    if classes is None:
        DatasetCatalog.get(name)  # custom loaders name their classes when they load
        classes = metadata.get("thing_classes")
    if classes is not None and len(classes) != num_classes:
        raise ConfigError(
            f"{keys.num_classes} is {num_classes} but dataset '{name}' has {len(classes)} categories: set "
            f"{keys.setting(keys.num_classes, len(classes))}"
        )


def _check_has_training_images(
    name: str, filter_empty: bool, records: Optional[List[Dict]], keys: ConfigKeys
) -> None:
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
            f"Dataset '{name}' has no image with annotations, and {keys.filter_empty} drops images without "
            "any: nothing would be left to train on"
        )


def _check_weights(
    build_cpu_model: Callable[[], torch.nn.Module],
    weights: str,
    allow_partial: bool,
    trust_pickle: bool,
    keys: ConfigKeys,
) -> None:
    """``weights`` exist, can be read safely, and fit the model (built on the CPU, as each process will build it)."""
    if not weights:
        raise ConfigError(
            f"--eval-only needs the weights to evaluate: add {keys.setting(keys.weights, '/path/to/model.pth')}"
        )
    path = urlparse(weights)._replace(query="").geturl()  # detectron2 reads "?matching_heuristics=True"
    if "://" in path:
        try:
            path = PathManager.get_local_path(path)  # downloads once, here, rather than in every process
        except Exception as e:
            raise ConfigError(f"cannot fetch {keys.weights} {weights}: {e}") from None
    if not os.path.isfile(path):
        raise ConfigError(f"{keys.weights} file not found: {path} (give a path, a detectron2:// URL or \"\")")
    checkpointer = EFLCheckpointer(
        build_cpu_model(), allow_partial=allow_partial, trust_pickle=trust_pickle, keys=keys, save_to_disk=False
    )
    logging.disable(logging.WARNING)  # each process says what it loads; this is only the check
    try:
        checkpointer.load(weights, checkpointables=[])
    finally:
        logging.disable(logging.NOTSET)


def _cpu_model(cfg: CfgNode) -> torch.nn.Module:
    cpu_cfg = cfg.clone()
    cpu_cfg.defrost()
    cpu_cfg.MODEL.DEVICE = "cpu"
    cpu_cfg.DATASETS.TRAIN = ()  # the frequency groups of the training set are not part of the weights
    return build_model(cpu_cfg)


def _cpu_lazy_model(cfg: DictConfig) -> torch.nn.Module:
    model_cfg = cfg.model
    # The frequency groups of the training set are not part of the weights, and reading LVIS's takes a while.
    has_groups = "frequency_groups" in model_cfg
    if has_groups:
        groups, model_cfg.frequency_groups = model_cfg.frequency_groups, None
    try:
        return instantiate(model_cfg)  # a LazyConfig's model is built on the CPU, then moved to train.device
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cannot build the model of the config: {type(e).__name__}: {e}") from None
    finally:
        if has_groups:
            model_cfg.frequency_groups = groups
