"""Tests of the synthetic long-tailed LVIS dataset: its content, json format and registration."""
import collections
import filecmp
import importlib
import json
import os
import uuid
from typing import Dict, List

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis import load_lvis_json
from detectron2.structures import BoxMode
from lvis import LVIS
from PIL import Image

import efl.data
from efl.data import (
    CLASS_NAMES,
    DEMO_SPEC,
    TEST_SPEC,
    SyntheticLVISSpec,
    class_colour,
    ensure_synthetic_lvis,
    family_image_counts,
    frequency_group,
    generate_synthetic_lvis,
    look_alike_base,
    register_synthetic_lvis,
    synthetic_root,
    synthetic_spec_of,
)

SPLITS = ("train", "val")


@pytest.fixture(scope="module")
def test_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("synthetic") / "test_spec")
    generate_synthetic_lvis(root, TEST_SPEC)
    return root


@pytest.fixture(scope="module")
def demo_train(tmp_path_factory) -> Dict:
    root = str(tmp_path_factory.mktemp("synthetic") / "demo_spec")
    generate_synthetic_lvis(root, DEMO_SPEC)
    return _load(root, "train")


def _load(root: str, split: str) -> Dict:
    with open(os.path.join(root, f"lvis_{split}.json")) as f:
        return json.load(f)


def _classes_per_image(dataset: Dict) -> Dict[int, List[int]]:
    classes = collections.defaultdict(list)
    for ann in dataset["annotations"]:
        classes[ann["image_id"]].append(ann["category_id"])
    return classes


def _image_counts(dataset: Dict) -> List[int]:
    images_of = collections.defaultdict(set)
    for ann in dataset["annotations"]:
        images_of[ann["category_id"]].add(ann["image_id"])
    return [len(images_of[cat["id"]]) for cat in dataset["categories"]]


def _assert_long_tailed(dataset: Dict, spec: SyntheticLVISSpec) -> None:
    assert _image_counts(dataset) == list(spec.image_counts)
    for image_classes in _classes_per_image(dataset).values():
        assert len(image_classes) == len(set(image_classes)), "a class twice in one image"
        assert 1 <= len(image_classes) <= 4
    assert len(_classes_per_image(dataset)) == spec.num_train_images, "an image without objects"
    frequencies = [cat["frequency"] for cat in dataset["categories"]]
    assert frequencies == [frequency_group(n) for n in spec.image_counts]
    assert set(frequencies) == {"r", "c", "f"}


def test_frequency_group_thresholds():
    groups = [frequency_group(n) for n in (1, 10, 11, 100, 101, 5000)]
    assert groups == ["r", "r", "c", "c", "f", "f"]


def test_generation_is_deterministic(test_root, tmp_path):
    again = str(tmp_path / "again")
    generate_synthetic_lvis(again, TEST_SPEC)
    for split in SPLITS:
        names = sorted(os.listdir(os.path.join(test_root, split)))
        assert names == sorted(os.listdir(os.path.join(again, split)))
        _, mismatch, errors = filecmp.cmpfiles(
            os.path.join(test_root, split), os.path.join(again, split), names, shallow=False
        )
        assert not mismatch and not errors
        json_name = f"lvis_{split}.json"
        assert filecmp.cmp(
            os.path.join(test_root, json_name), os.path.join(again, json_name), shallow=False
        )
    # Written into a temporary sibling and renamed: nothing else is left next to the dataset.
    assert os.listdir(tmp_path) == ["again"]


def test_test_spec_train_split_is_long_tailed(test_root):
    _assert_long_tailed(_load(test_root, "train"), TEST_SPEC)


def test_demo_spec_train_split_is_long_tailed(demo_train):
    _assert_long_tailed(demo_train, DEMO_SPEC)
    groups = collections.Counter(cat["frequency"] for cat in demo_train["categories"])
    assert groups == {"r": 6, "c": 6, "f": 6}
    assert len(demo_train["images"]) == 2000
    assert [cat["name"] for cat in demo_train["categories"]] == list(CLASS_NAMES)


def test_each_demo_family_is_a_frequent_base_with_a_common_and_a_rare_shade():
    counts = DEMO_SPEC.image_counts
    for family in range(6):
        base, light, dark = range(3 * family, 3 * family + 3)
        assert look_alike_base(light) == look_alike_base(dark) == look_alike_base(base) == base
        assert frequency_group(counts[base]) == "f"
        assert sorted(frequency_group(counts[c]) for c in (light, dark)) == ["c", "r"]
        assert CLASS_NAMES[light] == f"light_{CLASS_NAMES[base]}" and CLASS_NAMES[dark] == f"dark_{CLASS_NAMES[base]}"
    # Both light and dark shades are rare in some families.
    rare = [CLASS_NAMES[c].split("_")[0] for c, n in enumerate(counts) if frequency_group(n) == "r"]
    assert {"light", "dark"} == set(rare)
    assert family_image_counts(6, (375, 1000), (15, 60), (1, 5), seed=0) == counts


def test_shade_colours_are_the_base_colour_shifted_on_every_channel():
    assert CLASS_NAMES[:3] == ("red_circle", "light_red_circle", "dark_red_circle")
    assert class_colour(0, 35) == (190, 60, 60)
    assert class_colour(1, 35) == (225, 95, 95)
    assert class_colour(2, 20) == (170, 40, 40)
    # Among the classes of its shape, a shade's nearest is its base (its sibling shade is next, twice as far), so
    # that only a small difference of colour tells a shade from its base.
    for cls, name in enumerate(CLASS_NAMES):
        if look_alike_base(cls) == cls:
            continue
        same_shape = [c for c, other in enumerate(CLASS_NAMES) if other.split("_")[-1] == name.split("_")[-1]]
        distance = {c: np.linalg.norm(np.subtract(class_colour(c, 35), class_colour(cls, 35))) for c in same_shape}
        nearest, second = sorted((c for c in same_shape if c != cls), key=distance.get)[:2]
        assert nearest == look_alike_base(cls) and distance[nearest] == pytest.approx(35 * np.sqrt(3))
        assert distance[second] >= 2 * distance[nearest] - 1e-9


def _mean_object_colours(root: str) -> Dict[int, np.ndarray]:
    """The mean colour of each class's objects in both splits, sampled at the centre of each polygon."""
    samples = collections.defaultdict(list)
    for split in SPLITS:
        dataset = _load(root, split)
        anns = collections.defaultdict(list)
        for ann in dataset["annotations"]:
            anns[ann["image_id"]].append(ann)
        for image in dataset["images"]:
            pixels = np.asarray(Image.open(os.path.join(root, split, image["file_name"])), dtype=np.float64)
            for ann in anns[image["id"]]:
                x, y = np.array(ann["segmentation"][0]).reshape(-1, 2).mean(axis=0).round().astype(int)
                samples[ann["category_id"] - 1].append(pixels[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).mean(0))
    # The median over objects ignores the few whose centre another object covers.
    return {cls: np.median(colours, axis=0) for cls, colours in samples.items()}


def test_each_shade_looks_most_like_its_base(test_root):
    # TEST_SPEC: red circle, its light and dark shades; green square, its light and dark shades; blue triangle and
    # its light shade. Drawn colours (JPEG, colour jitter of +-25, pixel noise of +-10) stay near the design.
    colours = _mean_object_colours(test_root)
    shift = np.sqrt(3) * TEST_SPEC.shade_shift  # 60.6 RGB units
    for cls in range(8):
        np.testing.assert_allclose(colours[cls], class_colour(cls, TEST_SPEC.shade_shift), atol=15)
        base = look_alike_base(cls)
        if cls == base:
            continue
        assert np.linalg.norm(colours[cls] - colours[base]) == pytest.approx(shift, abs=15)
        others = [c for c in range(8) if c != cls]
        assert min(others, key=lambda c: np.linalg.norm(colours[cls] - colours[c])) == base


def test_tight_spec_is_packed_exactly(tmp_path):
    # Three classes in every one of 10 images: only capacities of exactly 3 everywhere work.
    spec = SyntheticLVISSpec((10, 10, 10, 2), num_train_images=10, num_val_images=2, image_size=64)
    root = str(tmp_path / "tight")
    generate_synthetic_lvis(root, spec)
    assert _image_counts(_load(root, "train")) == [10, 10, 10, 2]


@pytest.mark.parametrize("split", SPLITS)
def test_json_has_the_lvis_fields(test_root, split):
    dataset = _load(test_root, split)
    num_images = TEST_SPEC.num_train_images if split == "train" else TEST_SPEC.num_val_images
    assert len(dataset["images"]) == num_images
    for image in dataset["images"]:
        assert {"id", "width", "height", "file_name", "coco_url", "neg_category_ids"} <= set(image)
        assert image["not_exhaustive_category_ids"] == []
        assert image["coco_url"] == f"http://synthetic/{split}/{image['file_name']}"
        assert image["width"] == image["height"] == TEST_SPEC.image_size
        assert os.path.isfile(os.path.join(test_root, split, image["file_name"]))
    ann_ids = [ann["id"] for ann in dataset["annotations"]]
    assert ann_ids == list(range(1, len(ann_ids) + 1))
    for ann in dataset["annotations"]:
        assert set(ann) == {"id", "image_id", "category_id", "bbox", "area", "segmentation"}
    for cat, count in zip(dataset["categories"], TEST_SPEC.image_counts):
        name = cat["name"]
        assert cat["synset"] == f"{name}.n.01" and cat["synonyms"] == [name] and cat["def"]
        assert cat["image_count"] == cat["instance_count"] == count
    assert [cat["id"] for cat in dataset["categories"]] == list(range(1, 9))


@pytest.mark.parametrize("split", SPLITS)
def test_boxes_are_tight_polygons_inside_the_image(test_root, split):
    size = TEST_SPEC.image_size
    for ann in _load(test_root, split)["annotations"]:
        (flat,) = ann["segmentation"]
        assert len(flat) % 2 == 0 and len(flat) >= 6
        polygon = np.array(flat).reshape(-1, 2)
        x, y, w, h = ann["bbox"]
        assert all(isinstance(v, float) for v in ann["bbox"])
        np.testing.assert_allclose([x, y], polygon.min(axis=0), atol=1e-6)
        np.testing.assert_allclose([x + w, y + h], polygon.max(axis=0), atol=1e-6)
        assert 0 <= x and 0 <= y and x + w <= size and y + h <= size and w > 0 and h > 0
        xs, ys = polygon[:, 0], polygon[:, 1]
        shoelace = 0.5 * abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))
        assert ann["area"] == pytest.approx(shoelace, abs=0.01)
        assert 0 < ann["area"] <= w * h


@pytest.mark.parametrize("split", SPLITS)
def test_negative_categories_are_exactly_the_absent_ones(test_root, split):
    dataset = _load(test_root, split)
    present = _classes_per_image(dataset)
    all_ids = {cat["id"] for cat in dataset["categories"]}
    for image in dataset["images"]:
        assert image["neg_category_ids"] == sorted(all_ids - set(present[image["id"]]))


def test_val_split_has_every_class_and_bases_more_often_than_shades(test_root, tmp_path):
    val = _load(test_root, "val")
    # Even the rarest training classes have several val instances.
    assert min(_image_counts(val)) >= 2
    assert all(1 <= len(classes) <= 4 for classes in _classes_per_image(val).values())
    spec = SyntheticLVISSpec(TEST_SPEC.image_counts, 120, 600, image_size=64)
    generate_synthetic_lvis(str(tmp_path / "big_val"), spec)
    instances = _image_counts(_load(str(tmp_path / "big_val"), "val"))
    bases, shades = [instances[c] for c in (0, 3, 6)], [instances[c] for c in (1, 2, 4, 5, 7)]
    # Drawn without replacement (distinct classes per image), bases come about 1.75 times as often as shades here.
    assert min(bases) > 1.4 * max(shades) and min(shades) > 100


def test_lvis_api_loads_both_splits(test_root):
    # Evaluation of the ground truth as detections (AP 100) is in test_evaluation.py.
    for split in SPLITS:
        lvis = LVIS(os.path.join(test_root, f"lvis_{split}.json"))
        assert len(lvis.get_cat_ids()) == len(TEST_SPEC.image_counts)


@pytest.mark.parametrize("split", SPLITS)
def test_detectron2_loader_reads_the_json(test_root, split):
    dicts = load_lvis_json(os.path.join(test_root, f"lvis_{split}.json"), test_root + "/")
    assert len(dicts) == len(_load(test_root, split)["images"])
    for record in dicts:
        assert os.path.isfile(record["file_name"])
        assert os.path.dirname(record["file_name"]) == os.path.join(test_root, split)
        for obj in record["annotations"]:
            assert 0 <= obj["category_id"] < len(TEST_SPEC.image_counts)
            assert obj["bbox_mode"] == BoxMode.XYWH_ABS


@pytest.fixture
def prefix():
    name = f"test_synthetic_lvis_{uuid.uuid4().hex[:8]}"
    yield name
    for split in SPLITS:
        if f"{name}_{split}" in DatasetCatalog.list():
            DatasetCatalog.remove(f"{name}_{split}")
        if f"{name}_{split}" in MetadataCatalog.list():
            MetadataCatalog.remove(f"{name}_{split}")


def test_registration_sets_metadata_and_generates_on_first_use(tmp_path, monkeypatch, prefix):
    monkeypatch.setenv("EFL_CACHE_DIR", str(tmp_path))
    register_synthetic_lvis(prefix, TEST_SPEC)
    root = synthetic_root(TEST_SPEC)
    assert root.startswith(str(tmp_path)) and not os.path.exists(root)
    for split in SPLITS:
        meta = MetadataCatalog.get(f"{prefix}_{split}")
        assert meta.json_file == os.path.join(root, f"lvis_{split}.json")
        assert os.path.isabs(meta.json_file)
        assert meta.image_root == root + "/"
        assert meta.evaluator_type == "lvis"
        assert meta.thing_classes == list(CLASS_NAMES[:8])
        assert meta.class_image_count == [
            {"id": i + 1, "image_count": n} for i, n in enumerate(TEST_SPEC.image_counts)
        ]
        assert synthetic_spec_of(f"{prefix}_{split}") == TEST_SPEC
    assert not os.path.exists(root), "registration must not generate"

    dicts = DatasetCatalog.get(f"{prefix}_val")
    assert os.path.isdir(root) and len(dicts) == TEST_SPEC.num_val_images
    assert all(os.path.isfile(d["file_name"]) for d in dicts)
    assert ensure_synthetic_lvis(TEST_SPEC) == root


def test_registration_is_idempotent_but_refuses_another_spec(tmp_path, monkeypatch, prefix):
    monkeypatch.setenv("EFL_CACHE_DIR", str(tmp_path))
    register_synthetic_lvis(prefix, TEST_SPEC)
    register_synthetic_lvis(prefix, TEST_SPEC)
    other = SyntheticLVISSpec(TEST_SPEC.image_counts, 120, 24, image_size=128, seed=1)
    with pytest.raises(ValueError, match="already registered"):
        register_synthetic_lvis(prefix, other)
    assert os.listdir(tmp_path) == []


def test_synthetic_spec_of_other_datasets_is_none():
    name = f"not_registered_{uuid.uuid4().hex[:8]}"
    assert synthetic_spec_of(name) is None
    assert name not in MetadataCatalog.list()


def test_package_registers_the_demo_and_test_sets():
    # Registration itself never generates (see above), so importing the package does not either.
    expected = {"efl_synth_lt": DEMO_SPEC, "efl_synth_test": TEST_SPEC}
    for prefix, spec in expected.items():
        for split in SPLITS:
            assert synthetic_spec_of(f"{prefix}_{split}") == spec
    # Re-importing registers the same names with the same specs again, which must be accepted.
    importlib.reload(efl.data)


def test_synthetic_root_depends_on_the_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("EFL_CACHE_DIR", str(tmp_path))
    root = synthetic_root(TEST_SPEC)
    assert os.path.dirname(root) == str(tmp_path)
    assert os.path.basename(root).startswith("synthetic_lvis_")
    assert synthetic_root(SyntheticLVISSpec(list(TEST_SPEC.image_counts), 120, 24, 128)) == root
    assert synthetic_root(SyntheticLVISSpec(TEST_SPEC.image_counts, 120, 24, 128, seed=1)) != root


def test_generate_refuses_an_existing_root(test_root):
    with pytest.raises(FileExistsError):
        generate_synthetic_lvis(test_root, TEST_SPEC)


@pytest.mark.parametrize(
    "spec, message",
    [
        (SyntheticLVISSpec((4, 4, 4, 4, 4), 4, 2), "exceeds 4 objects"),
        (SyntheticLVISSpec((11, 2), 10, 2), "no count can exceed"),
        (SyntheticLVISSpec((5, 0), 5, 2), "at least one training image"),
        (SyntheticLVISSpec((1,) * 19, 40, 2), "1 to 18 classes"),
        (SyntheticLVISSpec((2, 2), 2, 2, shade_shift=36), "shade_shift"),
        (SyntheticLVISSpec((2, 2), 10, 2), "every training image needs an object"),
        (SyntheticLVISSpec((2, 2), 2, 0), "at least one train and one val image"),
        (SyntheticLVISSpec((2, 2), 2, 2, image_size=32), "image_size"),
    ],
)
def test_bad_specs_are_rejected(spec, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        generate_synthetic_lvis(str(tmp_path / "bad"), spec)
    with pytest.raises(ValueError, match=message):
        register_synthetic_lvis(f"bad_{uuid.uuid4().hex[:8]}", spec)
    assert os.listdir(tmp_path) == []
