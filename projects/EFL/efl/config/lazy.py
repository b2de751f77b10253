"""
The LazyConfig front-end: a ``.py`` config (detectron2's LazyConfig: ``model``, ``dataloader``, ``optimizer``,
``lr_multiplier``, ``train``, as in its model zoo's ``configs/common``), loaded with a one-line message for each
mistake a user makes in the file or on the command line, checked for what only a LazyConfig can get wrong, and
turned into the engine's :class:`~efl.engine.Recipe`. Messages name its settings as a LazyConfig writes them
(efl.config.names).

Overrides are detectron2's (``key=value``, Hydra's syntax), with one difference: detectron2 creates a key that the
config does not have, so a misspelled one is silently ignored; here it is refused, with the closest keys. A key
may be new where the config says it may be:
- a keyword argument of a ``LazyCall`` node's target (``model.test_nms_thresh=0.5`` on a RetinaNet whose config
  leaves it at its default), found from the target's signature;
- the optional keys of ``train`` and ``dataloader`` (:data:`OPTIONAL_KEYS`), and anything under ``train.ddp``
  (DistributedDataParallel's keyword arguments);
- any key written as Hydra adds one, ``+key=value``.

The keys this project reads beyond detectron2's, all optional::

    train.max_epochs = 24  # count in epochs: train.max_iter and lr_multiplier's iterations are set from the data
    train.epoch_steps = [16, 22]  # the milestones of lr_multiplier's MultiStepParamScheduler, in epochs
    train.warmup_epochs = 1.0  # the length of its WarmupParamScheduler, in epochs
    train.allow_partial_weights = True  # load weights that do not fill the model (fine-tuning)
    train.clip_gradients = dict(max_norm=35.0, norm_type=2.0)  # clip the norm of all gradients together
    train.reset_efl_statistics = True  # start the EFL statistics afresh after loading train.init_checkpoint
    dataloader.register = [("mine_train", "lvis", "/data/mine/train.json", "/data/mine/images")]  # your datasets

``dataloader.train.sampler`` is optional: TrainingSampler by default, or efl.data.samplers.RepeatFactorSampler
for repeat factors with ceil or stochastic rounding. An EFL detector (``model._target_``) is given the frequency
groups of the training set, unless the config sets ``model.frequency_groups``.
"""
import difflib
import inspect
import os
import re
import sysconfig
import traceback
from typing import Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

from fvcore.common.param_scheduler import MultiStepParamScheduler
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig
from omegaconf.errors import OmegaConfBaseException

from detectron2.config import LazyConfig, instantiate
from detectron2.data import get_detection_dataset_dicts
from detectron2.data.samplers import TrainingSampler
from detectron2.solver import WarmupParamScheduler
from detectron2.utils.registry import locate

from ..data.samplers import REPEAT_ROUNDINGS, RepeatFactorSampler
from ..data.train_loader import LoaderCall
from ..engine import EpochSchedule, Recipe, RunSettings, TestSet
from ..errors import ConfigError
from ..modeling import EFLDetectorMixin
from .names import LAZY_NAMES

__all__ = [
    "OPTIONAL_KEYS",
    "LazyLRSchedule",
    "LazyRecipe",
    "calls",
    "lazy_dataset_names",
    "lazy_lr_schedule",
    "load_lazy_config",
]

# The nodes a LazyConfig needs, for training and for --eval-only.
_TRAIN_NODES = ("model", "dataloader.train", "optimizer", "lr_multiplier", "train")
_EVAL_NODES = ("model", "dataloader.test", "dataloader.evaluator", "train")

# Keys that a config need not have but that may be set (node -> its keys): detectron2's (its configs/common/train.py
# and what default_setup reads) and this project's.
OPTIONAL_KEYS = {
    "": ("model", "dataloader", "optimizer", "lr_multiplier", "train"),
    "train": (
        "output_dir", "init_checkpoint", "max_iter", "amp", "ddp", "checkpointer", "eval_period", "log_period",
        "device", "seed", "cudnn_benchmark",
        # this project's
        "max_epochs", "epoch_steps", "warmup_epochs", "allow_partial_weights", "clip_gradients",
        "reset_efl_statistics",
    ),
    "train.amp": ("enabled",),
    "train.checkpointer": ("period", "max_to_keep"),  # detectron2's PeriodicCheckpointer
    "train.clip_gradients": ("max_norm", "norm_type"),  # efl.engine.FullModelGradientClipping
    "dataloader": ("train", "test", "evaluator", "register"),
}  # fmt: skip
# Nodes that take any key.
_OPEN_NODES = ("train.ddp",)


def load_lazy_config(config_file: str, overrides: Sequence[str] = (), eval_only: bool = False) -> DictConfig:
    """
    The LazyConfig in ``config_file`` with ``overrides`` ("key=value") applied.

    Raises:
        ConfigError: with a one-line message, for a missing file or one that does not run, an override that does
            not parse, names a key the config does not have (see the module's docstring) or cannot be applied, a
            count in iterations given on the command line with ``train.max_epochs``, a node the run needs that is
            missing, and missing weights.
    """
    if not os.path.isfile(config_file):
        raise ConfigError(f"config file not found: {config_file}")
    try:
        cfg = LazyConfig.load(config_file)
    except Exception as e:
        raise ConfigError(f"cannot load config file {config_file}: {_load_error(e)}") from None
    keys = []
    for override in overrides:
        key = _apply_override(cfg, override)
        keys.append(key)
    if cfg.get("train") is not None and cfg.train.get("max_epochs"):
        resolved = lazy_lr_schedule(cfg).resolved_keys
        for key in keys:
            if key in resolved:
                raise ConfigError(
                    f"train.max_epochs ({cfg.train.max_epochs}) sets {', '.join(resolved)} from the training set, "
                    f"but {key} is given on the command line too: to count in iterations add train.max_epochs=null, "
                    "to count in epochs set train.epoch_steps / train.warmup_epochs instead"
                )
    needed = _EVAL_NODES if eval_only else _TRAIN_NODES
    for node in needed:
        if _select(cfg, node) is None:
            task = "evaluate" if eval_only else "train"
            raise ConfigError(f"{config_file} has no '{node}': a LazyConfig needs {', '.join(needed)} to {task}")
    weights = cfg.train.get("init_checkpoint") or ""
    if eval_only and not weights:
        raise ConfigError("--eval-only needs the weights to evaluate: add train.init_checkpoint=/path/to/model.pth")
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise ConfigError(f"train.init_checkpoint file not found: {weights} (give a path, a detectron2:// URL or \"\")")
    return cfg


def _load_error(error: Exception) -> str:
    """What went wrong while a config file ran, and where in it (or in a file it imports)."""
    if isinstance(error, SyntaxError):
        # detectron2 wraps the parser's error, which has the line, in one that names the file
        named = re.match(r"Config file (.+) has syntax error!$", str(error))
        cause = error.__cause__ if isinstance(error.__cause__, SyntaxError) else error
        filename = named.group(1) if named else cause.filename
        return f"SyntaxError: {cause.msg} ({filename}, line {cause.lineno})"
    libraries = tuple(os.path.realpath(p) for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"]})
    frames = [
        f
        for f in traceback.extract_tb(error.__traceback__)
        if f.filename.endswith(".py") and not os.path.realpath(f.filename).startswith(libraries)
    ]
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {' '.join(str(error).split())}{where}"


def _apply_override(cfg: DictConfig, override: str) -> str:
    """Apply one override, with the checks of this module's docstring; returns its key."""
    try:
        (parsed,) = OverridesParser.create().parse_overrides([override])
    except HydraException as e:
        detail = " ".join(line.strip() for line in str(e).splitlines() if not line.startswith("See https"))
        raise ConfigError(f"command line: cannot parse the override {override!r}: {detail}") from None
    key = parsed.key_or_group
    if parsed.is_delete():
        raise ConfigError(f"command line: {override!r}: deleting a key is not supported; set it to null instead")
    if not (parsed.is_add() or parsed.is_force_add()):
        _check_key(cfg, key)
    try:
        LazyConfig.apply_overrides(cfg, [override])
    except (HydraException, OmegaConfBaseException, KeyError, ValueError, TypeError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ConfigError(f"command line: cannot apply {override!r}: {' '.join(str(message).split())}") from None
    return key


def _check_key(cfg: DictConfig, key: str) -> None:
    """Raise ConfigError unless ``key`` is in ``cfg`` or may be added to it (see the module's docstring)."""
    node, path = cfg, ""
    for part in key.split("."):
        here = f"{path}.{part}" if path else part
        if isinstance(node, (DictConfig, ListConfig)) and _has(node, part):
            node = _child(node, part)
            if not isinstance(node, (DictConfig, ListConfig)) and node is not None and here != key:
                raise ConfigError(f"command line: {here} is a value ({node!r}), not a group of keys: cannot set {key}")
        elif path in _OPEN_NODES:
            return
        elif part in (_keywords_of(node) or ()) or part in OPTIONAL_KEYS.get(path, ()):
            node = None  # a new key: what may lie below it is known from OPTIONAL_KEYS only
        elif _keywords_of(node) is None and _is_call(node):
            return  # a target that takes any keyword argument
        else:
            close = difflib.get_close_matches(key, sorted(set(_known_keys(cfg))), n=3, cutoff=0.7)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise ConfigError(
                f"command line: unknown config key {key}{hint}; to add a key the config does not have, write "
                f"+{key}=..."
            )
        path = here


def _has(node, part: str) -> bool:
    if isinstance(node, ListConfig):
        return part.isdigit() and int(part) < len(node)
    return part in node


def _child(node, part: str):
    """The value under ``part`` of a config node; None for an interpolation that does not resolve."""
    try:
        return node[int(part)] if isinstance(node, ListConfig) else node[part]
    except OmegaConfBaseException:
        return None


def _is_call(node) -> bool:
    return isinstance(node, DictConfig) and "_target_" in node


def _target_of(node):
    """
    The object a LazyCall node calls (its ``_target_``, located when given by name); None for any other node and
    for a name that cannot be found (instantiate reports it).
    """
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if isinstance(target, str):
        try:
            return locate(target)
        except Exception:
            return None
    return target


def _keywords_of(node) -> Optional[Set[str]]:
    """
    The keyword arguments that a LazyCall node's target takes: an empty set for a node that is not a call, None for
    a target that takes any (``**kwargs`` that lead nowhere known) or cannot be found.
    """
    if not _is_call(node):
        return set()
    target = _target_of(node)
    if target is None:
        return None
    if isinstance(target, type):
        # A constructor that passes **kwargs on takes those of the next __init__ in the method resolution order.
        names: Set[str] = set()
        for cls in target.__mro__:
            init = cls.__dict__.get("__init__")
            if init is None:
                continue
            found = _parameters(init)
            if found is None:
                return None
            named, takes_more = found
            names |= named
            if not takes_more:
                return names
        return None
    found = _parameters(target)
    if found is None or found[1]:
        return None
    return found[0]


def _parameters(function) -> Optional[Tuple[Set[str], bool]]:
    """The names ``function`` takes by keyword and whether it takes **kwargs; None when it has no signature."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = {p.name for p in parameters if p.kind in keyword and p.name != "self"}
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _known_keys(cfg: DictConfig) -> Iterator[str]:
    """Every key of ``cfg`` (all levels), the optional ones and the keyword arguments of its calls."""
    for path, keys in OPTIONAL_KEYS.items():
        yield from (f"{path}.{k}" if path else k for k in keys)
    stack: List[Tuple[str, object]] = [("", cfg)]
    while stack:
        prefix, node = stack.pop()
        if isinstance(node, DictConfig):
            for name in list(node.keys()) + sorted(_keywords_of(node) or ()):
                key = f"{prefix}{name}"
                yield key
                if name in node:
                    stack.append((f"{key}.", _child(node, name)))


def _select(cfg: DictConfig, key: str):
    node = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, DictConfig) else None
    return node


def lazy_dataset_names(cfg: DictConfig, eval_only: bool = False) -> Tuple[List[str], List[str]]:
    """
    The datasets a LazyConfig trains on (none with ``eval_only``) and evaluates on (none without an evaluator),
    where its loaders read them with detectron2's ``get_detection_dataset_dicts`` (other datasets are not known
    before they are built).
    """

    def names(loader: str) -> List[str]:
        dataset = _select(cfg, f"dataloader.{loader}.dataset")
        if not calls(dataset, get_detection_dataset_dicts):
            return []
        value = dataset.get("names")
        return [value] if isinstance(value, str) else list(value or ())

    train = [] if eval_only else names("train")
    test = names("test") if _select(cfg, "dataloader.evaluator") is not None else []
    return train, test


def calls(node, obj, exactly: bool = False) -> bool:
    """
    Whether ``node`` is a LazyCall of ``obj`` (its ``_target_`` given as the object or by name), or, for a class,
    unless ``exactly``, of a subclass of it.
    """
    target = _target_of(node)
    if isinstance(obj, type) and not exactly:
        return isinstance(target, type) and issubclass(target, obj)
    return target is obj


class LazyLRSchedule(NamedTuple):
    """
    Where the iteration counts of a LazyConfig's ``lr_multiplier`` live: its WarmupParamScheduler (the multiplier
    itself, or None) and its MultiStepParamScheduler (the multiplier or the scheduler the warm-up wraps, or None),
    with the names of those nodes.
    """

    warmup: Optional[DictConfig]
    warmup_key: str
    multistep: Optional[DictConfig]
    multistep_key: str

    @property
    def resolved_keys(self) -> Tuple[str, ...]:
        """The keys that an epoch-based schedule sets: the length, milestones, updates and warm-up length."""
        keys = ["train.max_iter"]
        if self.multistep is not None:
            keys += [f"{self.multistep_key}.milestones", f"{self.multistep_key}.num_updates"]
        if self.warmup is not None:
            keys.append(f"{self.warmup_key}.warmup_length")
        return tuple(keys)


def lazy_lr_schedule(cfg: DictConfig) -> LazyLRSchedule:
    """The parts of ``cfg.lr_multiplier`` that an epoch-based schedule sets (see :class:`LazyLRSchedule`)."""
    multiplier = cfg.get("lr_multiplier")
    warmup, inner, inner_key = None, multiplier, "lr_multiplier"
    if calls(multiplier, WarmupParamScheduler):
        warmup, inner, inner_key = multiplier, multiplier.get("scheduler"), "lr_multiplier.scheduler"
    multistep = inner if calls(inner, MultiStepParamScheduler) else None
    return LazyLRSchedule(warmup, "lr_multiplier", multistep, inner_key)


class LazyRecipe(Recipe):
    """A LazyConfig as the engine runs it: each part instantiated from its node."""

    def __init__(self, cfg: DictConfig, eval_only: bool = False):
        """
        Args:
            cfg: a loaded config (:func:`load_lazy_config`).
            eval_only: whether it is only evaluated (then its training loader is not read).
        """
        self.config = cfg
        train, loader = cfg.train, cfg.dataloader
        train_names, test_names = lazy_dataset_names(cfg, eval_only)
        train_loader = loader.get("train") or {}
        dataset = train_loader.get("dataset") if train_names else None
        num_classes = cfg.model.get("num_classes")
        max_epochs = train.get("max_epochs")
        clip = train.get("clip_gradients")
        checkpointer = train.get("checkpointer") or {}
        self.settings = RunSettings(
            names=LAZY_NAMES,
            output_dir=train.output_dir,
            device=str(train.get("device", "cuda")),
            num_classes=num_classes if isinstance(num_classes, int) else None,
            train_datasets=tuple(train_names),
            test_datasets=tuple(test_names),
            register=tuple(tuple(entry) for entry in loader.get("register") or ()),
            batch_size=train_loader.get("total_batch_size"),
            max_iter=None if max_epochs else train.get("max_iter"),
            epochs=EpochSchedule(
                max_epochs, tuple(train.get("epoch_steps") or ()), train.get("warmup_epochs") or 0.0
            ) if max_epochs else None,  # fmt: skip
            weights=train.get("init_checkpoint") or "",
            allow_partial_weights=bool(train.get("allow_partial_weights", False)),
            reset_efl_statistics=bool(train.get("reset_efl_statistics", False)),
            filter_empty=dataset.get("filter_empty", True) if dataset is not None else True,
            amp=bool((train.get("amp") or {}).get("enabled", False)),
            clip_gradients=(clip.max_norm, clip.get("norm_type", 2.0)) if clip else None,
            checkpoint_period=checkpointer.get("period", 5000),
            max_to_keep=checkpointer.get("max_to_keep"),
            eval_period=train.get("eval_period", 0),
            log_period=train.get("log_period", 20),
            ddp=dict(train.get("ddp") or {}),
        )

    def check(self, eval_only: bool = False) -> None:
        """What only a LazyConfig can get wrong: the repeat-factor rounding of its sampler, and a schedule in
        epochs whose sampler or lr_multiplier cannot take it."""
        if eval_only:
            return
        cfg = self.config
        train, sampler = cfg.train, cfg.dataloader.train.get("sampler")
        if calls(sampler, RepeatFactorSampler):
            rounding = sampler.get("rounding", "stochastic")
            if rounding not in REPEAT_ROUNDINGS:
                raise ConfigError(
                    f"dataloader.train.sampler.rounding must be one of {', '.join(REPEAT_ROUNDINGS)}, got {rounding!r}"
                )
        if not train.get("max_epochs"):
            return
        epochs = calls(sampler, RepeatFactorSampler) or calls(sampler, TrainingSampler, exactly=True)
        if sampler is not None and not epochs:
            raise ConfigError(
                "train.max_epochs needs a sampler with epochs: dataloader.train.sampler TrainingSampler (the default) "
                "or efl.data.samplers.RepeatFactorSampler (repeat factors with ceil or stochastic rounding); or count "
                "in iterations with train.max_epochs=null and train.max_iter"
            )
        steps, warmup = self.settings.epochs.steps, self.settings.epochs.warmup
        schedule = lazy_lr_schedule(cfg)
        if steps and schedule.multistep is None:
            raise ConfigError(
                "train.epoch_steps needs lr_multiplier to be a MultiStepParamScheduler, or a WarmupParamScheduler of "
                "one, whose milestones they set"
            )
        if schedule.multistep is not None:
            values = list(schedule.multistep.get("values") or ())
            if len(values) != len(steps) + 1:
                raise ConfigError(
                    f"{schedule.multistep_key}.values has {len(values)} values, so train.epoch_steps needs "
                    f"{len(values) - 1} epochs, got {list(steps)}"
                )
        if warmup and schedule.warmup is None:
            raise ConfigError("train.warmup_epochs needs lr_multiplier to be a WarmupParamScheduler, whose length it sets")

    def build_model(self, frequency_groups):
        node = self.config.model
        if frequency_groups is not None and calls(node, EFLDetectorMixin) and node.get("frequency_groups") is None:
            node.frequency_groups = list(frequency_groups)
        try:
            model = instantiate(node)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"cannot build the model of the config: {type(e).__name__}: {e}") from None
        return model.to(self.settings.device)  # a LazyConfig's model is built on the CPU

    def build_optimizer(self, model):
        self.config.optimizer.params.model = model
        return instantiate(self.config.optimizer)

    def train_loader(self) -> LoaderCall:
        node = self.config.dataloader.train
        build = node._target_
        arguments = {key: instantiate(value) for key, value in node.items() if key != "_target_"}
        return LoaderCall(locate(build) if isinstance(build, str) else build, arguments)

    def build_lr_scheduler(self, optimizer, resolved):
        cfg = self.config
        if resolved is not None:
            parts = lazy_lr_schedule(cfg)
            cfg.train.max_iter = resolved.max_iter
            if parts.multistep is not None:
                parts.multistep.milestones = list(resolved.steps)
                parts.multistep.num_updates = resolved.max_iter
            if parts.warmup is not None:
                parts.warmup.warmup_length = resolved.warmup_iters / max(resolved.max_iter, 1)
        return instantiate(cfg.lr_multiplier)

    def test_mapper(self):
        return instantiate(self.config.dataloader.test.mapper)

    def test_sets(self) -> List[TestSet]:
        loader = self.config.dataloader
        if loader.get("evaluator") is None:
            return []
        names = self.settings.test_datasets
        return [
            TestSet(
                names[0] if len(names) == 1 else "test",
                lambda: instantiate(loader.test),
                lambda: instantiate(loader.evaluator),
            )
        ]
