"""
Your own long-tailed dataset, registered under any name from the config (yacs ``DATASETS.REGISTER``, LazyConfig
``dataloader.register``), in LVIS or COCO
json format:

- the class ids of the file may be any distinct integers (COCO's are not contiguous): they are mapped to 0..C-1
  in increasing order, and evaluation maps them back;
- each class's number of training images (the LVIS frequency groups of the gamma-by-group logging and of
  tools/plot_efl_stats.py) is the category's ``image_count`` when every category has one, and is otherwise
  counted from the annotations;
- a mistake in the file stops with a message that names the file and what to fix; boxes of zero or negative
  width or height are left out, with one warning that counts them.

detectron2's ``register_lvis_instances`` only knows the metadata of LVIS's own names, and its ``load_lvis_json``
needs a polygon for every box and each image's folder in a ``coco_url``; this loader needs boxes only, and takes
each image from ``file_name`` (relative to the image root) or, as LVIS v1 does, from ``coco_url``.
"""
import codecs
import contextlib
import functools
import json
import logging
import mmap
import os
import re
from collections import defaultdict
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..errors import ConfigError

__all__ = [
    "DATASET_FORMATS",
    "check_registered_dataset",
    "class_names",
    "load_detection_json",
    "naming_malformed_dataset_files",
    "register_dataset",
    "register_datasets",
    "registered_source",
]

logger = logging.getLogger(__name__)

DATASET_FORMATS = ("lvis", "coco")
# How many annotation or image ids a message quotes as examples.
_EXAMPLES = 5


def register_datasets(entries: Iterable[Sequence[str]], key: str = "register") -> None:
    """
    Register each ``(name, format, json_file, image_root)`` of ``entries``; ``key`` is the setting that lists them
    (DATASETS.REGISTER, dataloader.register), named in messages.
    """
    for entry in entries:
        if isinstance(entry, str) or len(entry) != 4:
            raise ConfigError(
                f"each {key} entry must be (name, format, json_file, image_root), e.g. "
                f"('mine_train', 'lvis', '/data/mine/train.json', '/data/mine/images'); got {entry!r}"
            )
        register_dataset(*entry, key=key)


def register_dataset(name: str, dataset_format: str, json_file: str, image_root: str, key: str = "register") -> None:
    """
    Register ``name`` in detectron2's DatasetCatalog and MetadataCatalog. Nothing is read here: the file is read
    when the dataset is first loaded, which sets its classes, their id mapping and their image counts in the
    metadata. Registering the same name with the same source again does nothing (launch's worker processes
    register what the parent did); another source under a taken name is refused.
    """
    if dataset_format not in DATASET_FORMATS:
        formats = ", ".join(DATASET_FORMATS)
        raise ConfigError(f"{key} '{name}': the format must be one of {formats}, got {dataset_format!r}")
    source = (dataset_format, os.path.abspath(json_file), os.path.abspath(image_root))
    if name in DatasetCatalog.list():
        if registered_source(name) == source:
            return
        raise ConfigError(
            f"{key}: the name '{name}' is taken by another dataset (e.g. a built-in one): choose another"
        )
    DatasetCatalog.register(name, functools.partial(load_detection_json, *source[1:], dataset_format, name))
    MetadataCatalog.get(name).set(
        json_file=source[1], image_root=source[2], evaluator_type=dataset_format, registered_source=source
    )


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


def registered_source(name: str) -> Optional[Tuple[str, str, str]]:
    """(format, json_file, image_root) of a dataset registered by :func:`register_dataset`, else None."""
    if name not in MetadataCatalog.list():
        return None
    return MetadataCatalog.get(name).get("registered_source", None)


def load_detection_json(json_file: str, image_root: str, dataset_format: str, dataset_name: str) -> List[Dict]:
    """
    The detectron2 records (boxes only) of an LVIS- or COCO-format file; sets ``thing_classes``,
    ``thing_dataset_id_to_contiguous_id`` and ``class_image_count`` in the metadata of ``dataset_name``.
    """
    data = _read(json_file)
    id_map, classes = _categories(data["categories"], json_file)
    images = _images(data["images"], json_file, image_root, dataset_format)
    records = {image_id: record for image_id, record in images}
    invalid_boxes = []
    for index, ann in enumerate(data["annotations"]):
        where = f"{json_file}: annotations[{index}] (id {ann.get('id', '?')})"
        for key in ("image_id", "category_id", "bbox"):
            if key not in ann:
                raise ConfigError(f"{where} has no '{key}'")
        if ann["image_id"] not in records:
            raise ConfigError(f"{where} refers to image {ann['image_id']!r}, which is not in 'images'")
        if ann["category_id"] not in id_map:
            raise ConfigError(
                f"{where} has category_id {ann['category_id']!r}, which is not in 'categories': add the category "
                "or remove the annotation"
            )
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise ConfigError(f"{where} has bbox {bbox!r}: it must be [x, y, width, height]")
        if bbox[2] <= 0 or bbox[3] <= 0:
            invalid_boxes.append(ann.get("id", f"annotations[{index}]"))
            continue
        obj = {"bbox": bbox, "bbox_mode": BoxMode.XYWH_ABS, "category_id": id_map[ann["category_id"]]}
        if ann.get("iscrowd", 0):
            obj["iscrowd"] = 1
        records[ann["image_id"]]["annotations"].append(obj)
    if invalid_boxes:
        logger.warning(
            f"{len(invalid_boxes)} annotations of {json_file} have a box of zero or negative width or height and are "
            f"left out; annotation ids {', '.join(map(str, invalid_boxes[:_EXAMPLES]))}"
            + (", ..." if len(invalid_boxes) > _EXAMPLES else "")
        )
    dataset = list(records.values())
    MetadataCatalog.get(dataset_name).set(
        thing_classes=classes,
        thing_dataset_id_to_contiguous_id=id_map,
        class_image_count=_class_image_count(data["categories"], dataset, id_map),
    )
    return dataset


def class_names(dataset_name: str) -> List[str]:
    """
    The class names of a registered dataset in contiguous-id order, without loading its annotations: those its
    registration put in the metadata (detectron2's built-in sets such as LVIS, the synthetic sets), else, for a set
    registered by :func:`register_dataset`, those of its file's "categories", ordered by id as loading it orders
    them.

    Raises:
        ConfigError: for a dataset that is not registered, one whose classes are known only once it is loaded, and
            a file whose categories cannot be read.
    """
    if dataset_name not in DatasetCatalog.list():
        raise ConfigError(f"dataset '{dataset_name}' is not registered")
    names = MetadataCatalog.get(dataset_name).get("thing_classes", None)
    if names is not None:
        return list(names)
    source = registered_source(dataset_name)
    if source is None:
        raise ConfigError(
            f"dataset '{dataset_name}' has no class names before it is loaded: register it with the config "
            "(DATASETS.REGISTER, dataloader.register) or set thing_classes in its metadata"
        )
    json_file = source[1]
    return _categories(_read_categories(json_file), json_file)[1]


def _read_categories(json_file: str) -> List:
    """
    The "categories" array of a dataset file: the array after its first "categories" key, decoded alone (LVIS's
    training file is over a gigabyte, its categories a few hundred kilobytes at its end); the whole file when that
    fails.
    """
    try:
        with open(json_file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for key in re.finditer(rb'"categories"\s*:\s*\[', data):
                categories = _decode_array(data, key.end() - 1)
                if categories is not None:
                    return categories
    except (OSError, ValueError):  # unreadable, or empty (which mmap refuses): _read says which
        pass
    return _read(json_file)["categories"]


def _decode_array(data: mmap.mmap, start: int) -> Optional[List]:
    """The JSON array starting at byte ``start``, decoded from as many bytes as it takes; None if there is none."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    text, end, chunk = "", start, 1 << 16
    while end < len(data):
        text += decoder.decode(data[end : end + chunk])
        end, chunk = end + chunk, chunk * 2
        try:
            array, _ = json.JSONDecoder().raw_decode(text)
            return array
        except json.JSONDecodeError:
            continue  # cut short by the chunk (or invalid: then the whole file is read, and _read says where)
    return None


def check_registered_dataset(name: str, evaluation: bool) -> List[Dict]:
    """
    Load a dataset registered by :func:`register_dataset` and check it before anything starts:
    - for evaluation, every image must exist and (LVIS format) the file must hold what LVIS's evaluation reads;
    - else (training) at least one image must exist: missing ones are skipped with a warning while training.

    Returns:
        its records, which this leaves loaded.
    """
    dataset_format, json_file, image_root = registered_source(name)
    records = DatasetCatalog.get(name)
    missing = [r["file_name"] for r in records if not os.path.isfile(r["file_name"])]
    if missing and (evaluation or len(missing) == len(records)):
        raise ConfigError(
            f"{len(missing)} of the {len(records)} images of dataset '{name}' ({json_file}) are missing, e.g. "
            f"{', '.join(missing[:_EXAMPLES])}: check its image root {image_root}"
        )
    if missing:
        logger.warning(
            f"{len(missing)} of the {len(records)} training images of dataset '{name}' are missing and will be "
            f"skipped, e.g. {', '.join(missing[:_EXAMPLES])}"
        )
    if evaluation and dataset_format == "lvis":
        _check_lvis_evaluation_fields(_read(json_file), json_file)
    return records


def _read(json_file: str) -> Dict:
    try:
        with open(json_file) as f:
            data = json.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read dataset file {json_file}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"dataset file {json_file} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"dataset file {json_file} must hold a JSON object with images, annotations and categories")
    absent = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if absent:
        raise ConfigError(
            f"dataset file {json_file} has no list '{absent[0]}': it must hold images, annotations and categories"
        )
    return data


def _categories(categories: List[Dict], json_file: str) -> Tuple[Dict[int, int], List[str]]:
    """The map from the file's category ids to contiguous 0..C-1 (in increasing id order), and the class names."""
    for index, cat in enumerate(categories):
        if not isinstance(cat.get("id"), int) or "name" not in cat:
            raise ConfigError(f"{json_file}: categories[{index}] needs an integer 'id' and a 'name', got {cat!r}")
    ids = sorted(cat["id"] for cat in categories)
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"{json_file}: category ids {duplicates} appear more than once in 'categories'")
    if not ids:
        raise ConfigError(f"{json_file} has no categories")
    names = {cat["id"]: cat["name"] for cat in categories}
    return {cid: i for i, cid in enumerate(ids)}, [names[cid] for cid in ids]


def _images(images: List[Dict], json_file: str, image_root: str, dataset_format: str) -> List[Tuple[int, Dict]]:
    out = []
    for index, image in enumerate(images):
        where = f"{json_file}: images[{index}] (id {image.get('id', '?')})"
        for key in ("id", "height", "width"):
            if key not in image:
                raise ConfigError(f"{where} has no '{key}'")
        if "file_name" in image:
            file_name = os.path.join(image_root, image["file_name"])
        elif dataset_format == "lvis" and "coco_url" in image:
            # LVIS v1: http://images.cocodataset.org/train2017/000000391895.jpg lies in <root>/train2017/
            file_name = os.path.join(image_root, *image["coco_url"].split("/")[-2:])
        else:
            where_from = "'file_name'" + (" or 'coco_url'" if dataset_format == "lvis" else "")
            raise ConfigError(f"{where} has no {where_from} to find its image by")
        record = {"file_name": file_name, "height": image["height"], "width": image["width"], "image_id": image["id"]}
        if dataset_format == "lvis":
            record["neg_category_ids"] = image.get("neg_category_ids", [])
            record["not_exhaustive_category_ids"] = image.get("not_exhaustive_category_ids", [])
        record["annotations"] = []
        out.append((image["id"], record))
    if len({image_id for image_id, _ in out}) != len(out):
        raise ConfigError(f"{json_file}: image ids in 'images' are not unique")
    return out


def _class_image_count(categories: List[Dict], dataset: List[Dict], id_map: Dict[int, int]) -> List[Dict]:
    """[{"id": category id, "image_count": n}] as in detectron2's LVIS metadata: the file's, or counted."""
    if all("image_count" in cat for cat in categories):
        ordered = sorted(categories, key=lambda c: c["id"])
        return [{"id": cat["id"], "image_count": cat["image_count"]} for cat in ordered]
    counts = defaultdict(int)
    for record in dataset:
        for category in {obj["category_id"] for obj in record["annotations"]}:
            counts[category] += 1
    return [{"id": cid, "image_count": counts[index]} for cid, index in id_map.items()]


def _check_lvis_evaluation_fields(data: Dict, json_file: str) -> None:
    """What lvis.LVISEval reads beyond the loader's needs; 'frequency' is filled from image counts when absent."""
    for key in ("neg_category_ids", "not_exhaustive_category_ids"):
        lacking = [image["id"] for image in data["images"] if key not in image]
        if lacking:
            raise ConfigError(
                f"{json_file}: {len(lacking)} images have no '{key}' (e.g. image ids "
                f"{', '.join(map(str, lacking[:_EXAMPLES]))}), which LVIS evaluation needs: add it (the category "
                "ids verified absent from / not exhaustively annotated in the image; [] when none), or register the "
                "set with format 'coco' if every image is annotated exhaustively"
            )
    lacking = [ann.get("id", "?") for ann in data["annotations"] if "area" not in ann or "id" not in ann]
    if lacking:
        raise ConfigError(
            f"{json_file}: {len(lacking)} annotations have no 'id' or no 'area' (e.g. "
            f"{', '.join(map(str, lacking[:_EXAMPLES]))}), which LVIS evaluation needs: add them (area: of the "
            "object's mask, or width x height of its box)"
        )
