"""
Checks of a run against the machine, the datasets and the weights it names, done once in train_net.py's process
before any worker starts, so that a wrong path or setting stops with a one-line message that says what to fix.
They read the run's plain settings (:class:`~efl.engine.RunSettings`), whichever config system they came from,
after the recipe's own checks of what only its config system can get wrong; messages name each setting as that
system writes it. Nothing here builds a model: that the weights fit it is checked where each process loads them.
"""
import os
from typing import Dict, List, Optional
from urllib.parse import urlparse

import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager

from ..data import check_registered_dataset, naming_malformed_dataset_files, registered_source, synthetic_spec_of
from ..engine import Recipe, RunSettings
from ..errors import ConfigError, SettingNames

__all__ = ["check"]


def check(
    recipe: Recipe, eval_only: bool = False, resume: bool = False, num_processes: int = 1, here: bool = True
) -> None:
    """
    Raise ConfigError unless ``recipe`` can run here in ``num_processes`` processes: the device present, a length
    and a batch that the processes can share, what its config system checks (``recipe.check``), every dataset it
    uses registered with its files in place (the embedded synthetic sets are generated when they are first loaded,
    not here), its evaluation images present (registered sets), as many classes in the model as in the datasets,
    training images to train on, the weights present (unless ``resume`` finds a checkpoint to start from), and an
    output directory that can be created and written. ``here``: the run will run on this machine (else, as for a
    job submitted to a cluster, its device is not checked).
    """
    settings = recipe.settings
    names = settings.names
    if here and settings.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"{names.device} is '{settings.device}' but no CUDA GPU is visible: add "
            f"{names.setting(names.device, 'cpu')} to the command line to run on the CPU"
        )
    if not eval_only:
        _check_length(settings)
        batch = settings.batch_size
        if not isinstance(batch, int) or batch < 1 or batch % num_processes:
            raise ConfigError(
                f"{names.batch_size} {batch} cannot be split evenly over {num_processes} processes "
                f"(--num-gpus x --num-machines): make it a multiple of {num_processes}"
            )
    recipe.check(eval_only)
    _check_datasets(settings, eval_only)
    resumes = resume and os.path.isfile(os.path.join(settings.output_dir, "last_checkpoint"))
    if (eval_only or settings.weights) and not resumes:
        _check_weights(settings.weights, names)
    _check_output_dir(settings.output_dir, names)


def _check_length(settings: RunSettings) -> None:
    names, epochs = settings.names, settings.epochs
    if epochs is None:
        if not isinstance(settings.max_iter, int) or settings.max_iter < 1:
            raise ConfigError(f"{names.max_iter} must be at least 1 to train, got {settings.max_iter}")
        return
    if not isinstance(epochs.max_epochs, (int, float)) or epochs.max_epochs < 0:
        raise ConfigError(f"{names.max_epochs} must be 0 (count in iterations) or more, got {epochs.max_epochs}")
    steps = list(epochs.steps)
    if any(not 0 < e < epochs.max_epochs for e in steps) or steps != sorted(steps):
        raise ConfigError(
            f"{names.epoch_steps} must increase within (0, {names.max_epochs} = {epochs.max_epochs}), got {steps}"
        )
    if not 0 <= epochs.warmup <= epochs.max_epochs:
        raise ConfigError(f"{names.warmup_epochs} must lie in [0, {epochs.max_epochs}], got {epochs.warmup}")


def _check_datasets(settings: RunSettings, eval_only: bool) -> None:
    """Every dataset registered with its files in place and the model's number of classes; images to train on."""
    train_names = [] if eval_only else list(settings.train_datasets)
    test_names = list(settings.test_datasets)
    records: Dict[str, List[Dict]] = {}
    with naming_malformed_dataset_files(train_names + test_names):
        for name in dict.fromkeys(train_names + test_names):
            _check_dataset_files(name, settings.names)
            if registered_source(name) is not None:
                records[name] = check_registered_dataset(name, evaluation=name in test_names)
            if settings.num_classes is not None:
                _check_num_classes(name, settings.num_classes, settings.names)
        for name in train_names:
            _check_has_training_images(name, settings.filter_empty, records.get(name), settings.names)


def _datasets_root() -> str:
    root = os.getenv("DETECTRON2_DATASETS", "datasets")
    return f"$DETECTRON2_DATASETS ({root!r}, i.e. {os.path.abspath(os.path.expanduser(root))})"


def _check_dataset_files(name: str, names: SettingNames) -> None:
    if name not in DatasetCatalog.list():
        raise ConfigError(
            f"Dataset '{name}' is not registered. Built-in LVIS v1 names are lvis_v1_train and "
            "lvis_v1_val; the embedded synthetic set is efl_synth_lt_train / efl_synth_lt_val; register your own "
            f"with {names.register}."
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


def _check_num_classes(name: str, num_classes: int, names: SettingNames) -> None:
    metadata = MetadataCatalog.get(name)
    classes = metadata.get("thing_classes")
    if classes is None:
        DatasetCatalog.get(name)  # custom loaders name their classes when they load
        classes = metadata.get("thing_classes")
    if classes is not None and len(classes) != num_classes:
        raise ConfigError(
            f"{names.num_classes} is {num_classes} but dataset '{name}' has {len(classes)} categories: set "
            f"{names.setting(names.num_classes, len(classes))}"
        )


def _check_has_training_images(
    name: str, filter_empty: bool, records: Optional[List[Dict]], names: SettingNames
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
            f"Dataset '{name}' has no image with annotations, and {names.filter_empty} drops images without "
            "any: nothing would be left to train on"
        )


def _check_weights(weights: str, names: SettingNames) -> None:
    """``weights`` given and present (a URL is fetched here once, rather than in every process)."""
    if not weights:
        raise ConfigError(
            f"--eval-only needs the weights to evaluate: add {names.setting(names.weights, '/path/to/model.pth')}"
        )
    path = urlparse(weights)._replace(query="").geturl()  # detectron2 reads "?matching_heuristics=True"
    if "://" in path:
        try:
            path = PathManager.get_local_path(path)
        except Exception as e:
            raise ConfigError(f"cannot fetch {names.weights} {weights}: {e}") from None
    if not os.path.isfile(path):
        raise ConfigError(f"{names.weights} file not found: {path} (give a path, a detectron2:// URL or \"\")")


def _check_output_dir(output_dir: str, names: SettingNames) -> None:
    """The output directory, or the nearest folder above it that exists, is one this process may write into (a
    read-only file system or missing permissions are found here, without creating anything)."""
    existing = os.path.abspath(output_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    problem = None
    if not os.path.isdir(existing):
        problem = f"{existing} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        try:
            writable = os.statvfs(existing).f_flag & os.ST_RDONLY == 0
        except OSError:
            writable = True
        problem = f"{existing} is not writable" + ("" if writable else " (a read-only file system)")
    if problem:
        raise ConfigError(f"{names.output_dir} {output_dir} cannot be created or written: {problem}; set {names.output_dir} to a writable folder")
