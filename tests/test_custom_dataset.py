"""
Your own long-tailed dataset, registered from the command line (DATASETS.REGISTER): trained, evaluated by
frequency group, plotted; and each mistake in it stops with a message that names the file.
"""
import json
import logging
from argparse import Namespace

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from conftest import DEMO_CONFIG, SMALL_OPTS, small_recipe, stops_before_any_process
from efl import ConfigError, check, load
from efl.data import TEST_SPEC, ensure_synthetic_lvis, register_dataset
from efl.data.train_loader import build_resumable_train_loader
from efl.engine import run
import plot_efl_stats

# The file's category ids: neither contiguous nor in 1..C, as COCO's are.
CATEGORY_ID = {i + 1: 10 * (i + 1) + 3 for i in range(len(TEST_SPEC.image_counts))}
NEGATIVE_BOX_ID = 990001


def own_copy(split, root):
    """The synthetic test set's ``split`` as a user's own LVIS file would be: other category ids, no image counts
    or frequencies, images by file_name only, and one box of negative width."""
    with open(f"{root}/lvis_{split}.json") as f:
        data = json.load(f)
    for cat in data["categories"]:
        cat["id"] = CATEGORY_ID[cat["id"]]
        del cat["image_count"], cat["frequency"]
    for image in data["images"]:
        image["file_name"] = f"{split}/{image.pop('coco_url').rsplit('/', 1)[1]}"
        image["neg_category_ids"] = [CATEGORY_ID[c] for c in image["neg_category_ids"]]
    for ann in data["annotations"]:
        ann["category_id"] = CATEGORY_ID[ann["category_id"]]
    if split == "train":
        bad = dict(data["annotations"][0], id=NEGATIVE_BOX_ID, bbox=[40.0, 40.0, -10.0, 12.0])
        data["annotations"].append(bad)
    return data


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    root = ensure_synthetic_lvis(TEST_SPEC)
    out = tmp_path_factory.mktemp("own")
    files = {}
    for split in ("train", "val"):
        files[split] = out / f"{split}.json"
        files[split].write_text(json.dumps(own_copy(split, root)))
    return files, root


@pytest.fixture
def registered(request):
    """register(name, format, json, root) for one test; the names are removed afterwards."""
    names = []

    def register(name, *source):
        register_dataset(name, *map(str, source))
        names.append(name)
        return name

    yield register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_registered_from_the_command_line_trains_evaluates_and_plots(own_data, tmp_path, caplog):
    """What train_net.py does with DATASETS.REGISTER on its command line (efl.config.load, then efl.engine.run, which
    each process runs), in this process."""
    files, root = own_data
    register = f"(('mine_train', 'lvis', '{files['train']}', '{root}'), ('mine_val', 'lvis', '{files['val']}', '{root}'))"
    opts = [
        *SMALL_OPTS, "DATASETS.REGISTER", register, "DATASETS.TRAIN", "('mine_train',)", "DATASETS.TEST", "('mine_val',)",
        "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path),
    ]  # fmt: skip
    try:
        recipe = load(str(DEMO_CONFIG), opts)
        check(recipe)
        with caplog.at_level(logging.WARNING):
            run(Namespace(eval_only=False, resume=False, trust_pickle=False, config_file=str(DEMO_CONFIG), opts=opts), recipe)
        output = tmp_path / "stats.png"  # plot_efl_stats.py registers the run's datasets from its config.yaml
        plot_efl_stats.main([str(tmp_path / "model_final.pth"), "--dataset", "mine_train", "--output", str(output)])
    finally:
        for name in ("mine_train", "mine_val"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    log = " ".join(r.getMessage() for r in caplog.records)
    assert "1 annotations of" in log and f"annotation ids {NEGATIVE_BOX_ID}" in log
    with open(tmp_path / "inference" / "mine_val" / "results.json") as f:
        results = json.load(f)["bbox"]
    assert all(0.0 <= results[m] <= 100.0 for m in ("AP", "APr", "APc", "APf")), results
    metrics = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert {"efl/gamma_rare", "efl/gamma_common", "efl/gamma_frequent"} <= set(metrics[0])
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_classes_and_image_counts_come_from_the_file(own_data, registered):
    files, root = own_data
    name = registered("mine_counted", "lvis", files["train"], root)
    records = DatasetCatalog.get(name)
    metadata = MetadataCatalog.get(name)
    assert metadata.thing_dataset_id_to_contiguous_id == {cid: i for i, cid in enumerate(CATEGORY_ID.values())}
    # each class is in exactly TEST_SPEC.image_counts[i] training images, once per image
    assert metadata.class_image_count == [
        {"id": CATEGORY_ID[i + 1], "image_count": n} for i, n in enumerate(TEST_SPEC.image_counts)
    ]
    assert sum(len(r["annotations"]) for r in records) == sum(TEST_SPEC.image_counts)  # the negative box left out
    assert {obj["category_id"] for r in records for obj in r["annotations"]} == set(range(8))


def test_coco_format_with_sparse_ids(own_data, registered, tmp_path):
    files, root = own_data
    data = json.loads(files["val"].read_text())
    for image in data["images"]:
        del image["neg_category_ids"], image["not_exhaustive_category_ids"]
    (tmp_path / "coco.json").write_text(json.dumps(data))
    name = registered("mine_coco", "coco", tmp_path / "coco.json", root)
    check(small_recipe("DATASETS.TRAIN", (), "DATASETS.TEST", (name,)))  # images present, 8 classes
    assert MetadataCatalog.get(name).evaluator_type == "coco"
    assert MetadataCatalog.get(name).thing_classes[0] == "red_circle"


def mutated(own_data, tmp_path, split, change):
    files, root = own_data
    data = json.loads(files[split].read_text())
    change(data)
    path = tmp_path / f"changed_{split}.json"
    path.write_text(json.dumps(data))
    return path, root


def check_split(registered, path, root, split):
    name = registered(f"mine_{split}_changed", "lvis", path, root)
    train, test = ((name,), ()) if split == "train" else ((), (name,))
    check(small_recipe("DATASETS.TRAIN", train, "DATASETS.TEST", test))


def test_an_annotation_of_an_unknown_category_names_the_file_and_annotation(own_data, registered, tmp_path):
    path, root = mutated(own_data, tmp_path, "train", lambda d: d["annotations"][3].update(category_id=7))
    annotation_id = json.loads(path.read_text())["annotations"][3]["id"]
    with pytest.raises(ConfigError, match=f"{path}: annotations\\[3\\] \\(id {annotation_id}\\) has category_id 7, which is not in 'categories'"):
        check_split(registered, path, root, "train")


def test_missing_test_images_are_found_before_training(own_data, registered, tmp_path):
    path, root = mutated(own_data, tmp_path, "val", lambda d: d["images"][5].update(file_name="val/gone.jpg"))
    with pytest.raises(ConfigError, match=r"1 of the 24 images of dataset 'mine_val_changed' .* are missing, e.g. .*val/gone.jpg"):
        check_split(registered, path, root, "val")


def test_lvis_evaluation_fields_are_required(own_data, registered, tmp_path):
    path, root = mutated(own_data, tmp_path, "val", lambda d: d["images"][0].pop("neg_category_ids"))
    with pytest.raises(ConfigError, match="1 images have no 'neg_category_ids'.*format 'coco'"):
        check_split(registered, path, root, "val")


def test_every_training_image_missing_stops_before_training(own_data, registered, tmp_path):
    def move(data):
        for image in data["images"]:
            image["file_name"] = "elsewhere/" + image["file_name"]

    path, root = mutated(own_data, tmp_path, "train", move)
    with pytest.raises(ConfigError, match="120 of the 120 images .* are missing"):
        check_split(registered, path, root, "train")


def test_malformed_json_names_the_file(own_data, registered, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    with pytest.raises(ConfigError, match=f"dataset file {path} is not valid JSON"):
        check_split(registered, path, own_data[1], "train")


def test_a_small_set_of_unreadable_images_stops_with_a_message(own_data, registered, tmp_path, caplog):
    """Fewer than 100 images, all present but unreadable: a message, not 'Sample larger than population'."""
    files, root = own_data
    data = json.loads(files["train"].read_text())
    data["images"] = data["images"][:5]
    kept = {image["id"] for image in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept]
    for image in data["images"]:
        (tmp_path / image["file_name"]).parent.mkdir(exist_ok=True)
        (tmp_path / image["file_name"]).write_bytes(b"not an image")
    (tmp_path / "five.json").write_text(json.dumps(data))
    name = registered("mine_unreadable", "lvis", tmp_path / "five.json", tmp_path)
    loader, _ = build_resumable_train_loader(small_recipe("DATASETS.TRAIN", (name,), "SOLVER.IMS_PER_BATCH", 2).train_loader(), 8)
    with caplog.at_level(logging.ERROR), pytest.raises(ConfigError, match="5 images in a row could not be read"):
        next(iter(loader))


def test_a_taken_name_is_refused(own_data):
    with pytest.raises(ConfigError, match="'lvis_v1_train' is taken"):
        register_dataset("lvis_v1_train", "lvis", str(own_data[0]["train"]), own_data[1])


def test_malformed_dataset_json_stops_in_one_line(tmp_path):
    (tmp_path / "broken.json").write_text('{"images": [}')
    register = f"(('broken_train', 'lvis', '{tmp_path / 'broken.json'}', '{tmp_path}'),)"
    message = stops_before_any_process(
        "--config-file", DEMO_CONFIG, *SMALL_OPTS, "DATASETS.REGISTER", register, "DATASETS.TRAIN", "('broken_train',)"
    )
    assert f"dataset file {tmp_path / 'broken.json'} is not valid JSON" in message
