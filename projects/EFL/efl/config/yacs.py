"""
The yacs front-end: a ``.yaml`` config (detectron2's CfgNode with :func:`add_efl_config`'s keys), loaded with a
one-line message for each mistake, checked for what only a yacs config can get wrong, and turned into the
engine's :class:`~efl.engine.Recipe`. Messages name its settings as yacs writes them (efl.config.names).
"""
import difflib
import functools
import os
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import yaml

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.data import (
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.build import _train_loader_from_config
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.solver import build_lr_scheduler, build_optimizer

from ..data.samplers import REPEAT_ROUNDINGS, RepeatFactorSampler
from ..data.train_loader import LoaderCall
from ..data.transforms import OpenCVResizeShortestEdge
from ..engine import FULL_MODEL, EpochSchedule, Recipe, RunSettings, TestSet
from ..errors import ConfigError
from ..evaluation import LVISEvaluator
from ..losses import check_efl_hyperparameters
from ..modeling import CLS_LOSSES, EFLDetectorMixin
from .defaults import add_efl_config
from .names import YACS_NAMES

__all__ = ["EFLCfgNode", "YacsRecipe", "build_evaluator", "build_test_loader", "load_config"]

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


def build_test_mapper(cfg: CN) -> DatasetMapper:
    """detectron2's test mapper; with INPUT.TEST_RESIZE_BACKEND "opencv" its resize uses OpenCV."""
    if cfg.INPUT.TEST_RESIZE_BACKEND == "pil":
        return DatasetMapper(cfg, False)
    resize = OpenCVResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    return DatasetMapper(cfg, False, augmentations=[resize])


def build_test_loader(cfg: CN, dataset_name: str):
    """detectron2's test loader, with :func:`build_test_mapper`'s mapper."""
    return build_detection_test_loader(cfg, dataset_name, mapper=build_test_mapper(cfg))


def build_evaluator(cfg: CN, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluator:
    """
    LVISEvaluator for LVIS-type datasets, COCOEvaluator for COCO-type ones, both keeping up to
    ``TEST.DETECTIONS_PER_IMAGE`` detections per image, in ``OUTPUT_DIR/inference/<dataset>`` by default. An
    LVIS-type set without frequency groups takes them from the first training set.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    max_dets = cfg.TEST.DETECTIONS_PER_IMAGE
    if evaluator_type == "lvis":
        frequency_from = cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None
        return LVISEvaluator(
            dataset_name, output_dir=output_folder, max_dets_per_image=max_dets, frequency_from=frequency_from
        )
    if evaluator_type == "coco":
        return COCOEvaluator(dataset_name, output_dir=output_folder, max_dets_per_image=max_dets)
    raise ConfigError(
        f"No evaluator for dataset '{dataset_name}' (evaluator_type {evaluator_type!r}): this project "
        "evaluates LVIS- and COCO-type datasets. Register it with evaluator_type 'lvis' or 'coco'."
    )


class YacsRecipe(Recipe):
    """A yacs config as the engine runs it: DefaultTrainer's parts, built from the config as detectron2 builds
    them, with this project's loader, schedule in epochs and gradient clipping over the whole model."""

    def __init__(self, cfg: CN, num_processes: int = 1):
        """
        Args:
            cfg: a loaded config (:func:`load_config`).
            num_processes: the processes that will train it, for SOLVER.REFERENCE_WORLD_SIZE (detectron2's
                scaling of batch, learning rate and schedule to the number of processes).
        """
        cfg = DefaultTrainer.auto_scale_workers(cfg, num_processes)
        self.config = cfg
        solver, clip = cfg.SOLVER, cfg.SOLVER.CLIP_GRADIENTS
        epochs = EpochSchedule(solver.MAX_EPOCHS, tuple(solver.EPOCH_STEPS), solver.WARMUP_EPOCHS)
        self.settings = RunSettings(
            names=YACS_NAMES,
            output_dir=cfg.OUTPUT_DIR,
            device=cfg.MODEL.DEVICE,
            num_classes=cfg.MODEL.RETINANET.NUM_CLASSES,
            train_datasets=tuple(cfg.DATASETS.TRAIN),
            test_datasets=tuple(cfg.DATASETS.TEST),
            register=tuple(tuple(entry) for entry in cfg.DATASETS.REGISTER),
            batch_size=solver.IMS_PER_BATCH,
            max_iter=None if solver.MAX_EPOCHS else solver.MAX_ITER,
            epochs=epochs if solver.MAX_EPOCHS else None,
            weights=cfg.MODEL.WEIGHTS,
            allow_partial_weights=cfg.MODEL.ALLOW_PARTIAL_WEIGHTS,
            reset_efl_statistics=cfg.MODEL.EFL.RESET_STATISTICS,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            amp=solver.AMP.ENABLED,
            clip_gradients=(clip.CLIP_VALUE, clip.NORM_TYPE) if clip.ENABLED and clip.CLIP_TYPE == FULL_MODEL else None,
            checkpoint_period=solver.CHECKPOINT_PERIOD,
            eval_period=cfg.TEST.EVAL_PERIOD,
            ddp={"broadcast_buffers": False},
        )

    def check(self, eval_only: bool = False) -> None:
        """What only a yacs config can get wrong: EFL's hyper-parameters and loss, detectron2 trainer features the
        engine does not run, the repeat-factor rounding, and an epoch schedule given with iteration counts."""
        cfg = self.config
        try:
            check_efl_hyperparameters(cfg.MODEL.EFL.GAMMA_B, cfg.MODEL.EFL.SCALE, cfg.MODEL.EFL.ALPHA)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        loss = cfg.MODEL.EFL.LOSS
        if loss not in CLS_LOSSES:
            raise ConfigError(f"MODEL.EFL.LOSS must be one of {', '.join(CLS_LOSSES)}, got {loss!r}")
        if loss == "eqfl" and cfg.MODEL.META_ARCHITECTURE != "ImprovedRetinaNet":
            raise ConfigError(
                "MODEL.EFL.LOSS 'eqfl' needs the IoU of each positive anchor's predicted box, which only "
                f"ImprovedRetinaNet computes; MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r}"
            )
        if cfg.INPUT.TEST_RESIZE_BACKEND not in ("pil", "opencv"):
            raise ConfigError(f"INPUT.TEST_RESIZE_BACKEND must be 'pil' or 'opencv', got {cfg.INPUT.TEST_RESIZE_BACKEND!r}")
        # detectron2's DefaultTrainer runs these; this project's engine does not, and says so rather than ignore them
        if cfg.TEST.PRECISE_BN.ENABLED:
            raise ConfigError("TEST.PRECISE_BN.ENABLED: precise BN statistics are not computed here; set it False")
        if cfg.TEST.EXPECTED_RESULTS:
            raise ConfigError("TEST.EXPECTED_RESULTS: expected results are not verified here; leave it empty")
        if eval_only:
            return
        if cfg.DATALOADER.REPEAT_ROUNDING not in REPEAT_ROUNDINGS:
            raise ConfigError(
                f"DATALOADER.REPEAT_ROUNDING must be one of {', '.join(REPEAT_ROUNDINGS)}, "
                f"got {cfg.DATALOADER.REPEAT_ROUNDING!r}"
            )
        solver = cfg.SOLVER
        if solver.MAX_EPOCHS <= 0:
            return
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
                    f"SOLVER.MAX_EPOCHS ({solver.MAX_EPOCHS}) sets SOLVER.MAX_ITER, STEPS and WARMUP_ITERS from the "
                    f"training set, but SOLVER.{key} is given too ({solver[key]}): to count in iterations add "
                    f"SOLVER.MAX_EPOCHS 0, to count in epochs leave SOLVER.{key} at its default ({default[key]}) and "
                    "set SOLVER.EPOCH_STEPS / SOLVER.WARMUP_EPOCHS"
                )

    def build_model(self, frequency_groups):
        cfg = self.config
        architecture = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
        if not (isinstance(architecture, type) and issubclass(architecture, EFLDetectorMixin)):
            return build_model(cfg)
        return architecture(cfg, frequency_groups=frequency_groups).to(torch.device(cfg.MODEL.DEVICE))

    def build_optimizer(self, model):
        cfg = self.config
        if cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == FULL_MODEL:  # clipped by the engine's hook instead
            cfg = _with(cfg, "SOLVER.CLIP_GRADIENTS.ENABLED", False)
        return build_optimizer(cfg, model)

    def train_loader(self) -> LoaderCall:
        cfg = self.config
        # the images detectron2's training loader reads (those without annotations dropped as configured)
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        sampler = None  # detectron2 builds the others from DATALOADER.SAMPLER_TRAIN
        if cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler":  # with DATALOADER.REPEAT_ROUNDING
            factors = RepeatFactorSampler.repeat_factors_from_category_frequency(
                dataset, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT
            )
            sampler = RepeatFactorSampler(factors, rounding=cfg.DATALOADER.REPEAT_ROUNDING, seed=cfg.SEED)
        arguments = _train_loader_from_config(cfg, DatasetMapper(cfg, True), dataset=dataset, sampler=sampler)
        return LoaderCall(build_detection_train_loader, arguments)

    def build_lr_scheduler(self, optimizer, resolved):
        cfg = self.config
        if resolved is not None:
            cfg = _with(
                cfg,
                "SOLVER.MAX_ITER", resolved.max_iter,
                "SOLVER.STEPS", resolved.steps,
                "SOLVER.WARMUP_ITERS", resolved.warmup_iters,
            )  # fmt: skip
        return build_lr_scheduler(cfg, optimizer)

    def test_mapper(self) -> DatasetMapper:
        return build_test_mapper(self.config)

    def test_sets(self) -> List[TestSet]:
        cfg = self.config
        return [
            TestSet(name, functools.partial(build_test_loader, cfg, name), functools.partial(build_evaluator, cfg, name))
            for name in cfg.DATASETS.TEST
        ]


def _with(cfg: CN, *keys_and_values) -> CN:
    """A frozen copy of ``cfg`` with KEY, VALUE, ... set."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.merge_from_list(list(keys_and_values))
    cfg.freeze()
    return cfg
