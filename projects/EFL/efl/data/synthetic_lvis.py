"""
A small synthetic long-tailed detection dataset in the LVIS v1 json format, and its registration
with detectron2.

Classes are coloured shapes in families of look-alikes: a base class ("red_circle") and its light and
dark shades ("light_red_circle", "dark_red_circle"), the same shape in a slightly shifted colour. The
train split is long-tailed by construction: class i appears in exactly ``spec.image_counts[i]`` training
images, so its LVIS frequency group (rare / common / frequent) is known in advance. The val split draws
classes regardless of their frequency (a base class weighing twice as much as each of its shades), so
that rare classes have enough instances to be measured, and lists every absent class as negative, so
that its evaluation is exhaustive. Everything is drawn from ``spec.seed``: the same spec (and Pillow)
gives byte-identical files. Datasets are cached under ``$EFL_CACHE_DIR`` (default ``~/.cache/efl``)
and generated on first use.
"""
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis import load_lvis_json
from PIL import Image, ImageDraw

__all__ = [
    "GENERATOR_VERSION",
    "CLASS_NAMES",
    "SyntheticLVISSpec",
    "DEMO_SPEC",
    "TEST_SPEC",
    "class_colour",
    "family_image_counts",
    "frequency_group",
    "look_alike_base",
    "generate_synthetic_lvis",
    "synthetic_root",
    "ensure_synthetic_lvis",
    "ensure_generated",
    "register_synthetic_lvis",
    "synthetic_spec_of",
]

logger = logging.getLogger(__name__)

# Part of the cache key: bump it whenever the generated content changes, so that datasets written
# by an older generator are not reused.
GENERATOR_VERSION = 2

# Each family is a base class and two look-alikes of it, its light and dark shades: the same shape in the base
# colour shifted by +-SyntheticLVISSpec.shade_shift on every RGB channel. LVIS's rare categories are often
# fine-grained relatives of frequent ones; here a shade's nearest class is its base (every family has its own
# shape), so every instance of the base is a hard negative for the shade. Base colours stay within [60, 195] per
# channel, so that shade shift and jitter never clip.
BASES = (
    ("circle", "red", (190, 60, 60)),
    ("square", "green", (60, 160, 70)),
    ("triangle", "blue", (60, 90, 190)),
    ("diamond", "yellow", (190, 180, 60)),
    ("star", "magenta", (180, 60, 180)),
    ("cross", "cyan", (60, 180, 185)),
)
_SHADES = ("", "light", "dark")
_SHADE_SIGN = {"": 0, "light": 1, "dark": -1}


@dataclass(frozen=True)
class _Class:
    shape: str
    colour: str
    base_rgb: Tuple[int, int, int]
    shade: str
    base: int  # index of the family's base class (itself for a base)

    @property
    def name(self) -> str:
        return "_".join(w for w in (self.shade, self.colour, self.shape) if w)


# Family-major, base first: category id i + 1 is CLASS_NAMES[i].
_CLASSES = tuple(
    _Class(shape, colour, rgb, shade, len(_SHADES) * family)
    for family, (shape, colour, rgb) in enumerate(BASES)
    for shade in _SHADES
)
CLASS_NAMES = tuple(c.name for c in _CLASSES)


def look_alike_base(cls: int) -> int:
    """The class index of the base class that class ``cls`` is a shade of (``cls`` itself for a base class)."""
    return _CLASSES[cls].base


def class_colour(cls: int, shade_shift: int) -> Tuple[int, int, int]:
    """The RGB colour of class ``cls`` before jitter: its base colour shifted by +-shade_shift for a shade."""
    sign = _SHADE_SIGN[_CLASSES[cls].shade]
    return tuple(v + sign * shade_shift for v in _CLASSES[cls].base_rgb)


# LVIS frequency groups, by number of training images containing the class.
RARE_MAX_IMAGES = 10
COMMON_MAX_IMAGES = 100

MAX_OBJECTS_PER_IMAGE = 4
_MIN_IMAGE_SIZE = 64
# Object sizes (circumscribed diameters) are given for 160 px images and scale with the image size.
_REFERENCE_IMAGE_SIZE = 160
_OBJECT_SIZE_RANGE = (24.0, 72.0)
# Enough to make colour visible but not trivially thresholdable.
_COLOUR_JITTER = 25
# Base colours lie in [60, 195] per channel: a larger shift plus the jitter would leave [0, 255].
_MAX_SHADE_SHIFT = 60 - _COLOUR_JITTER
# Uniform pixel noise in [-_NOISE_AMPLITUDE, _NOISE_AMPLITUDE]; uniform draws are much cheaper
# than normal ones.
_NOISE_AMPLITUDE = 10.0
# An object may cover at most this fraction of another object's box (or have its own box covered
# that much). This bounds the box IoU by the same value, and unlike IoU alone it also prevents a
# small object from vanishing under a big one while still being annotated.
_MAX_OVERLAP = 0.3
_MAX_PLACEMENT_TRIES = 50
_JPEG_QUALITY = 90


@dataclass(frozen=True)
class SyntheticLVISSpec:
    """
    What to generate. ``image_counts[i]`` is the number of training images that contain class i
    (category id i + 1, named ``CLASS_NAMES[i]``); it decides the class's frequency group. Shades are
    ``shade_shift`` per RGB channel away from their base colour, against a colour jitter of +-25.
    """

    image_counts: Tuple[int, ...]
    num_train_images: int
    num_val_images: int
    image_size: int = 160
    shade_shift: int = 35
    seed: int = 0

    def __post_init__(self) -> None:
        # A list or numpy integers would make the spec unhashable or break its json cache key.
        object.__setattr__(self, "image_counts", tuple(int(c) for c in self.image_counts))


def family_image_counts(
    num_families: int,
    frequent: Tuple[int, int],
    common: Tuple[int, int],
    rare: Tuple[int, int],
    seed: int,
) -> Tuple[int, ...]:
    """
    Image counts of the first ``num_families`` families: each base is frequent, one of its shades common and
    the other rare (light or dark at random). Each group's counts span its (min, max) range (geometrically for
    frequent and common, linearly for rare) and are shuffled over the families.
    """
    rng = np.random.default_rng(seed)
    group_counts = [
        rng.permutation(np.rint(np.geomspace(*frequent, num_families))),
        rng.permutation(np.rint(np.geomspace(*common, num_families))),
        rng.permutation(np.rint(np.linspace(*rare, num_families))),
    ]
    counts = []
    for family in range(num_families):
        base, common_shade, rare_shade = (int(g[family]) for g in group_counts)
        light, dark = (common_shade, rare_shade) if rng.random() < 0.5 else (rare_shade, common_shade)
        counts += [base, light, dark]
    return tuple(counts)


# Six families. A run of the demo sees about 8000 training images (4 epochs): a rare shade, in 1 to 5 of the 2000
# images, is met 4 to 20 times, and is outweighed in every batch by background and look-alike negatives, as LVIS's
# rare classes are (docs/demo.md has the measurements behind these numbers).
DEMO_SPEC = SyntheticLVISSpec(
    image_counts=family_image_counts(6, frequent=(375, 1000), common=(15, 60), rare=(1, 5), seed=0),
    num_train_images=2000,
    num_val_images=500,
)
# Two families and the base and light shade of a third: 2 frequent, 3 common and 3 rare classes.
TEST_SPEC = SyntheticLVISSpec(
    image_counts=(104, 25, 4, 102, 8, 40, 12, 2),
    num_train_images=120,
    num_val_images=24,
    image_size=128,
)


def frequency_group(image_count: int) -> str:
    """The LVIS frequency group ("r", "c" or "f") of a class in this many training images."""
    if image_count <= RARE_MAX_IMAGES:
        return "r"
    if image_count <= COMMON_MAX_IMAGES:
        return "c"
    return "f"


def _validate_spec(spec: SyntheticLVISSpec) -> None:
    counts, num_images = spec.image_counts, spec.num_train_images
    problems = []
    if not 1 <= len(counts) <= len(CLASS_NAMES):
        problems.append(f"needs 1 to {len(CLASS_NAMES)} classes, got {len(counts)}")
    if num_images < 1 or spec.num_val_images < 1:
        problems.append("needs at least one train and one val image")
    if spec.image_size < _MIN_IMAGE_SIZE:
        problems.append(f"image_size must be at least {_MIN_IMAGE_SIZE}, got {spec.image_size}")
    if not 1 <= spec.shade_shift <= _MAX_SHADE_SHIFT:
        problems.append(f"shade_shift must be in 1..{_MAX_SHADE_SHIFT}, got {spec.shade_shift}")
    if counts and min(counts) < 1:
        problems.append(f"every class needs at least one training image, got {min(counts)}")
    if counts and max(counts) > num_images:
        problems.append(
            f"a class appears at most once per image, so no count can exceed "
            f"num_train_images={num_images}, got {max(counts)}"
        )
    if sum(counts) > MAX_OBJECTS_PER_IMAGE * num_images:
        problems.append(
            f"sum(image_counts)={sum(counts)} exceeds {MAX_OBJECTS_PER_IMAGE} objects "
            f"x {num_images} training images"
        )
    if sum(counts) < num_images:
        problems.append(
            f"every training image needs an object, but sum(image_counts)={sum(counts)} "
            f"< num_train_images={num_images}"
        )
    if problems:
        raise ValueError(f"Invalid SyntheticLVISSpec: {'; '.join(problems)}")


def _can_pack(counts: Sequence[int], capacities: np.ndarray) -> bool:
    """
    Whether classes can be spread over images, each at most once per image, filling every image
    to its capacity (Gale-Ryser): the k most frequent classes need at most sum(min(capacity, k))
    slots. For k >= the largest capacity that sum is the total, which the caller matched.
    """
    top = np.cumsum(sorted(counts, reverse=True))
    return all(
        top[k - 1] <= np.minimum(capacities, k).sum()
        for k in range(1, min(len(counts), MAX_OBJECTS_PER_IMAGE) + 1)
    )


def _image_capacities(
    counts: Sequence[int], num_images: int, rng: np.random.Generator
) -> np.ndarray:
    """Random objects per image, in 1..4 and summing to sum(counts), that the counts can fill."""
    extra_per_image = MAX_OBJECTS_PER_IMAGE - 1
    extra = rng.choice(num_images * extra_per_image, size=sum(counts) - num_images, replace=False)
    capacities = 1 + np.bincount(extra // extra_per_image, minlength=num_images)
    # Evening capacities out only widens the packable set, and fully even ones can always be packed
    # by a valid spec, so this ends (random capacities usually need no evening at all).
    while not _can_pack(counts, capacities):
        capacities[np.argmax(capacities)] -= 1
        capacities[np.argmin(capacities)] += 1
    return capacities


def _train_layout(
    counts: Sequence[int], num_images: int, rng: np.random.Generator
) -> List[List[int]]:
    """The class indices of every training image: class i is in exactly counts[i] of them."""
    remaining = _image_capacities(counts, num_images, rng)
    layout: List[List[int]] = [[] for _ in range(num_images)]
    for cls in sorted(range(len(counts)), key=lambda i: -counts[i]):
        # Filling the images with the most room left first (random among equals) packs any
        # packable capacities, whatever the order of the classes.
        chosen = np.lexsort((rng.random(num_images), -remaining))[: counts[cls]]
        remaining[chosen] -= 1
        for image in chosen:
            layout[image].append(cls)
    # Classes were added by decreasing frequency: shuffle so that drawing order (who occludes
    # whom) does not depend on it.
    return [[int(c) for c in rng.permutation(classes)] for classes in layout]


def _val_layout(num_classes: int, num_images: int, rng: np.random.Generator) -> List[List[int]]:
    """
    The class indices of every val image: 1 to 4 distinct classes, drawn with a base class weighing twice as much
    as each of its shades. Whatever their training frequency, rare classes get enough instances to be measured,
    and a base class meets about as many look-alikes as instances of its own, not twice as many.
    """
    max_objects = min(MAX_OBJECTS_PER_IMAGE, num_classes)
    weights = np.array([2.0 if look_alike_base(c) == c else 1.0 for c in range(num_classes)])
    layout = []
    for _ in range(num_images):
        num_objects = rng.integers(1, max_objects + 1)
        chosen = rng.choice(num_classes, size=num_objects, replace=False, p=weights / weights.sum())
        layout.append([int(c) for c in chosen])
    return layout


def _ring(num_vertices: int, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * math.pi * np.arange(num_vertices) / num_vertices
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(num_points: int = 5, inner_radius: float = 0.45) -> np.ndarray:
    radii = np.tile([1.0, inner_radius], num_points)
    return _ring(2 * num_points, phase=-math.pi / 2) * radii[:, None]


def _cross(half_width: float = 0.3) -> np.ndarray:
    w = half_width
    arm = [(w, -1), (w, -w), (1, -w)]
    # The plus sign is one arm quarter repeated by 90 degree turns (x, y) -> (-y, x).
    quarters = [arm]
    for _ in range(3):
        quarters.append([(-y, x) for x, y in quarters[-1]])
    return np.array([p for quarter in quarters for p in quarter], dtype=np.float64)


def _unit_radius(polygon: np.ndarray) -> np.ndarray:
    return polygon / np.linalg.norm(polygon, axis=1).max()


# Vertices around the origin with circumradius 1. The diamond is elongated so that it is not a
# rotated square.
_UNIT_POLYGONS: Dict[str, np.ndarray] = {
    "circle": _ring(24),
    "square": _ring(4, phase=math.pi / 4),
    "triangle": _ring(3, phase=-math.pi / 2),
    "diamond": _ring(4) * np.array([0.55, 1.0]),
    "star": _star(),
    "cross": _unit_radius(_cross()),
}


def _random_polygon(shape: str, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """A randomly sized, rotated and placed polygon that lies inside the image."""
    scale = image_size / _REFERENCE_IMAGE_SIZE
    radius = rng.uniform(*_OBJECT_SIZE_RANGE) * scale / 2
    angle = rng.uniform(0, 2 * math.pi)
    centre = rng.uniform(radius, image_size - radius, size=2)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    # Rounded once here, so that the drawing and the annotation use the very same vertices.
    return np.round(centre + radius * _UNIT_POLYGONS[shape] @ rotation.T, 2)


def _box(polygon: np.ndarray) -> np.ndarray:
    """The tight XYXY box of a polygon."""
    return np.concatenate([polygon.min(axis=0), polygon.max(axis=0)])


def _max_overlap(box: np.ndarray, others: Sequence[np.ndarray]) -> float:
    """The largest fraction of the smaller box covered by the other one, over all other boxes."""
    worst = 0.0
    area = (box[2] - box[0]) * (box[3] - box[1])
    for other in others:
        width = min(box[2], other[2]) - max(box[0], other[0])
        height = min(box[3], other[3]) - max(box[1], other[1])
        if width > 0 and height > 0:
            other_area = (other[2] - other[0]) * (other[3] - other[1])
            worst = max(worst, width * height / min(area, other_area))
    return worst


def _place_object(
    shape: str, image_size: int, boxes: Sequence[np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """
    A random polygon overlapping the placed boxes at most _MAX_OVERLAP. When no try succeeds the
    least overlapping one is placed anyway: dropping the object would break the class image counts.
    """
    best, best_overlap = None, math.inf
    for _ in range(_MAX_PLACEMENT_TRIES):
        polygon = _random_polygon(shape, image_size, rng)
        overlap = _max_overlap(_box(polygon), boxes)
        if overlap < best_overlap:
            best, best_overlap = polygon, overlap
        if overlap <= _MAX_OVERLAP:
            break
    return best


def _background(image_size: int, rng: np.random.Generator) -> np.ndarray:
    """A linear gradient between two random colours in a random direction, plus pixel noise."""
    # float32 throughout: this is most of the generation time.
    start, end = rng.uniform(40, 215, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    coords = np.arange(image_size, dtype=np.float32)
    t = coords[:, None] * math.sin(angle) + coords[None, :] * math.cos(angle)
    t = (t - t.min()) / (t.max() - t.min())
    noise = rng.random(size=(image_size, image_size, 3), dtype=np.float32)
    noise = (2 * noise - 1) * _NOISE_AMPLITUDE
    image = start + t[..., None] * (end - start) + noise
    return np.rint(np.clip(image, 0, 255)).astype(np.uint8)


def _draw_distractors(draw: ImageDraw.ImageDraw, image_size: int, rng: np.random.Generator) -> None:
    # Thin lines of any colour, so that "pixels of a class colour" alone do not make an object.
    for _ in range(rng.integers(2, 6)):
        ends = rng.uniform(0, image_size, size=4).tolist()
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        draw.line(ends, fill=colour, width=int(rng.integers(1, 3)))


def _render_image(
    classes: Sequence[int], spec: SyntheticLVISSpec, rng: np.random.Generator
) -> Tuple[Image.Image, List[np.ndarray]]:
    """An image with one object per class index, and the objects' polygons."""
    image = Image.fromarray(_background(spec.image_size, rng))
    draw = ImageDraw.Draw(image)
    _draw_distractors(draw, spec.image_size, rng)
    polygons: List[np.ndarray] = []
    for cls in classes:
        polygon = _place_object(_CLASSES[cls].shape, spec.image_size, [_box(p) for p in polygons], rng)
        jitter = rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3)
        fill = np.array(class_colour(cls, spec.shade_shift)) + jitter
        draw.polygon([tuple(p) for p in polygon.tolist()], fill=tuple(int(v) for v in fill))
        polygons.append(polygon)
    return image, polygons


def _annotation(ann_id: int, image_id: int, cls: int, polygon: np.ndarray) -> Dict:
    x0, y0, x1, y1 = _box(polygon).tolist()
    # Shoelace formula over the closed polygon.
    xs, ys = polygon[:, 0], polygon[:, 1]
    next_xs, next_ys = np.append(xs[1:], xs[0]), np.append(ys[1:], ys[0])
    area = 0.5 * abs(xs @ next_ys - ys @ next_xs)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cls + 1,
        "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
        "area": round(float(area), 2),
        "segmentation": [polygon.reshape(-1).tolist()],
    }


def _categories(spec: SyntheticLVISSpec) -> List[Dict]:
    return [
        {
            "id": cls + 1,
            "name": CLASS_NAMES[cls],
            "synset": f"{CLASS_NAMES[cls]}.n.01",
            "synonyms": [CLASS_NAMES[cls]],
            "def": f"a {CLASS_NAMES[cls].replace('_', ' ')}",
            "frequency": frequency_group(count),
            "image_count": count,
            # A class appears at most once per training image.
            "instance_count": count,
        }
        for cls, count in enumerate(spec.image_counts)
    ]


def _write_split(
    root: str,
    split: str,
    layout: Sequence[Sequence[int]],
    first_image_id: int,
    spec: SyntheticLVISSpec,
    rng: np.random.Generator,
) -> None:
    """Render the images of a split into root/<split>/ and write root/lvis_<split>.json."""
    os.makedirs(os.path.join(root, split))
    all_category_ids = set(range(1, len(spec.image_counts) + 1))
    images, annotations = [], []
    for image_id, classes in enumerate(layout, start=first_image_id):
        file_name = f"{image_id:06d}.jpg"
        image, polygons = _render_image(classes, spec, rng)
        # 4:4:4 chroma keeps the colours of small objects, which tell classes apart.
        image.save(os.path.join(root, split, file_name), quality=_JPEG_QUALITY, subsampling=0)
        present = {cls + 1 for cls in classes}
        images.append(
            {
                "id": image_id,
                "width": spec.image_size,
                "height": spec.image_size,
                "file_name": file_name,
                # detectron2's load_lvis_json takes the image folder from the url.
                "coco_url": f"http://synthetic/{split}/{file_name}",
                # Every absent class is a verified negative: the annotation is exhaustive.
                "neg_category_ids": sorted(all_category_ids - present),
                "not_exhaustive_category_ids": [],
            }
        )
        for cls, polygon in zip(classes, polygons):
            annotations.append(_annotation(len(annotations) + 1, image_id, cls, polygon))
    dataset = {"images": images, "annotations": annotations, "categories": _categories(spec)}
    with open(os.path.join(root, f"lvis_{split}.json"), "w") as f:
        json.dump(dataset, f)


def generate_synthetic_lvis(root: str, spec: SyntheticLVISSpec) -> None:
    """
    Write root/train/*.jpg, root/val/*.jpg, root/lvis_train.json and root/lvis_val.json.

    The dataset is written into a temporary sibling directory and renamed into place, so that
    concurrent callers and interrupted runs never leave a half-written ``root``.

    Raises:
        ValueError: the spec is invalid.
        FileExistsError: ``root`` already exists (it is left untouched).
    """
    _validate_spec(spec)
    root = os.path.abspath(root)
    if os.path.exists(root):
        raise FileExistsError(errno.EEXIST, "Synthetic dataset directory already exists", root)
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp_root = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp", dir=parent)
    try:
        _write_dataset(tmp_root, spec)
        # mkdtemp's private permissions would lock other users out of a shared cache.
        os.chmod(tmp_root, 0o755)
        _move_into_place(tmp_root, root)
    except BaseException:
        shutil.rmtree(tmp_root, ignore_errors=True)
        raise


def _write_dataset(root: str, spec: SyntheticLVISSpec) -> None:
    rng = np.random.default_rng(spec.seed)
    train = _train_layout(spec.image_counts, spec.num_train_images, rng)
    val = _val_layout(len(spec.image_counts), spec.num_val_images, rng)
    _write_split(root, "train", train, 1, spec, rng)
    # Val image ids follow the train ones, as in LVIS where no id is shared between splits.
    _write_split(root, "val", val, spec.num_train_images + 1, spec, rng)


def _move_into_place(tmp_root: str, root: str) -> None:
    try:
        os.rename(tmp_root, root)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            # Another process renamed its copy into place first.
            raise FileExistsError(
                errno.EEXIST, "Synthetic dataset directory already exists", root
            ) from e
        raise


def synthetic_root(spec: SyntheticLVISSpec) -> str:
    """The cache directory of a spec: $EFL_CACHE_DIR (default ~/.cache/efl)/synthetic_lvis_<key>."""
    cache_dir = os.path.expanduser(os.environ.get("EFL_CACHE_DIR", "~/.cache/efl"))
    key = json.dumps(
        {"generator_version": GENERATOR_VERSION, **dataclasses.asdict(spec)}, sort_keys=True
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return os.path.join(os.path.abspath(cache_dir), f"synthetic_lvis_{digest}")


def _ensure_at(root: str, spec: SyntheticLVISSpec) -> None:
    if os.path.isdir(root):
        return
    logger.info(f"Generating the synthetic LVIS dataset {spec} in {root} ...")
    try:
        generate_synthetic_lvis(root, spec)
    except FileExistsError:
        # A concurrent caller generated the same, deterministic, dataset first.
        pass


def ensure_synthetic_lvis(spec: SyntheticLVISSpec) -> str:
    """The cache directory of a spec, after generating the dataset there if it is not yet."""
    root = synthetic_root(spec)
    _ensure_at(root, spec)
    return root


def _load_split(root: str, spec: SyntheticLVISSpec, split: str) -> List[Dict]:
    _ensure_at(root, spec)
    # Without a dataset name, load_lvis_json maps category id c to the contiguous id c - 1.
    return load_lvis_json(os.path.join(root, f"lvis_{split}.json"), root + "/")


def register_synthetic_lvis(prefix: str, spec: SyntheticLVISSpec) -> None:
    """
    Register "<prefix>_train" and "<prefix>_val" in detectron2's DatasetCatalog and MetadataCatalog.

    Nothing is generated here: the first ``DatasetCatalog.get`` does it. Registering the same
    names with the same spec again is a no-op; with another spec it raises ValueError.
    """
    _validate_spec(spec)
    root = synthetic_root(spec)
    thing_classes = list(CLASS_NAMES[: len(spec.image_counts)])
    class_image_count = [
        {"id": cls + 1, "image_count": count} for cls, count in enumerate(spec.image_counts)
    ]
    for split in ("train", "val"):
        name = f"{prefix}_{split}"
        if name in DatasetCatalog.list():
            if synthetic_spec_of(name) == spec:
                continue
            raise ValueError(f"Dataset '{name}' is already registered as another dataset")
        DatasetCatalog.register(name, functools.partial(_load_split, root, spec, split))
        MetadataCatalog.get(name).set(
            json_file=os.path.join(root, f"lvis_{split}.json"),
            # load_lvis_json appends the split folder to it as a plain string.
            image_root=root + "/",
            evaluator_type="lvis",
            thing_classes=thing_classes,
            # Training counts for both splits, as in detectron2's LVIS v1 metadata.
            class_image_count=class_image_count,
            synthetic_spec=spec,
        )


def ensure_generated(dataset_name: str) -> None:
    """Generate a registered synthetic dataset where its metadata points, if it is one and is missing."""
    spec = synthetic_spec_of(dataset_name)
    if spec is not None:
        _ensure_at(MetadataCatalog.get(dataset_name).image_root.rstrip("/"), spec)


def synthetic_spec_of(dataset_name: str) -> Optional[SyntheticLVISSpec]:
    """The spec of a registered synthetic dataset, or None for any other dataset name."""
    if dataset_name not in MetadataCatalog.list():
        return None
    return MetadataCatalog.get(dataset_name).get("synthetic_spec", None)
