"""
train_net.py end to end on the synthetic set (a real run, shared with other test modules), the engine's run of every
detector of the yacs configs, and the one-line messages train_net.py stops with on bad input: those found before any
process starts (in this process, through train_net.py's own main), and those found by a real run.
"""
import json
from argparse import Namespace

import pytest
import torch

from conftest import DEMO_CONFIG, REPO, SMALL_OPTS, assert_stops_with, small_recipe, stops_before_any_process, train_net
from efl.engine import run, train

LVIS_CONFIG = REPO / "configs" / "LVISv1" / "retinanet_R_50_FPN_24ep_efl.yaml"


def read_results(output_dir, dataset="efl_synth_test_val"):
    with open(output_dir / "inference" / dataset / "results.json") as f:
        return json.load(f)["bbox"]


def test_training_then_lvis_evaluation_reports_ap_by_frequency_group(trained_demo):
    out, run = trained_demo
    results = read_results(out)
    for metric in ("AP", "APr", "APc", "APf"):
        assert 0.0 <= results[metric] <= 100.0, (metric, results[metric])
    assert "copypaste: AP,AP50,AP75,APs,APm,APl,APr,APc,APf" in run.stdout + run.stderr
    metrics = [json.loads(line) for line in open(out / "metrics.json")]
    assert {"efl/gamma_rare", "efl/gamma_common", "efl/gamma_frequent"} <= set(metrics[0])

    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert state["iteration"] == 3 and {"optimizer", "hooks"} <= set(state["trainer"])
    assert (state["model"]["cls_loss.pos_grad"] > 0).any() and (state["model"]["cls_loss.neg_grad"] > 0).all()


def test_eval_only_on_a_saved_checkpoint_reproduces_its_results(trained_demo, tmp_path):
    """What each process of ``train_net.py --eval-only`` runs (efl.engine.run), here in this process."""
    out, _ = trained_demo
    recipe = small_recipe("MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path))
    args = Namespace(eval_only=True, resume=False, trust_pickle=False, config_file=str(DEMO_CONFIG), opts=[])
    results = run(args, recipe)
    assert results["efl_synth_test_val"]["bbox"] == pytest.approx(read_results(out))
    assert read_results(tmp_path) == pytest.approx(read_results(out))


@pytest.mark.parametrize("cls_loss", ["focal", "efl", "eqfl"])
def test_improved_baseline_trains_and_evaluates(cls_loss, tmp_path):
    config = REPO / "configs" / "Synthetic" / f"improved_R_18_demo_{cls_loss}.yaml"
    recipe = small_recipe("SOLVER.MAX_ITER", 2, "OUTPUT_DIR", tmp_path, config=config)
    train(recipe, resume=False)
    results = read_results(tmp_path)
    assert all(0.0 <= results[m] <= 100.0 for m in ("AP", "APr", "APc", "APf"))
    metrics = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert {"loss_cls", "loss_box_reg", "loss_iou"} <= set().union(*metrics)
    assert recipe.config.MODEL.EFL.LOSS == cls_loss


# ----- bad input: each stops in one line before any process starts


def test_num_classes_mismatch_names_the_right_value():
    message = stops_before_any_process("--config-file", DEMO_CONFIG, *SMALL_OPTS, "MODEL.RETINANET.NUM_CLASSES", 1203)
    assert "NUM_CLASSES is 1203" in message and "has 8 categories" in message
    assert "MODEL.RETINANET.NUM_CLASSES 8" in message


@pytest.mark.parametrize(
    "key,value,fragment",
    [("MODEL.EFL.GAMMA_B", 0.0, "MODEL.EFL.GAMMA_B"), ("MODEL.EFL.ALPHA", 2.0, "MODEL.EFL.ALPHA")],
)
def test_out_of_range_hyperparameters_stop_with_the_key(key, value, fragment):
    assert fragment in stops_before_any_process("--config-file", DEMO_CONFIG, *SMALL_OPTS, key, value)


def test_eval_only_needs_existing_weights(tmp_path):
    message = stops_before_any_process(
        "--config-file", DEMO_CONFIG, "--eval-only", *SMALL_OPTS, "MODEL.WEIGHTS", tmp_path / "nope.pth"
    )
    assert "MODEL.WEIGHTS file not found" in message


def test_unregistered_dataset_is_named():
    message = stops_before_any_process("--config-file", DEMO_CONFIG, *SMALL_OPTS, "DATASETS.TRAIN", "('lvis_v2_train',)")
    assert "Dataset 'lvis_v2_train' is not registered" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_device_without_gpu_suggests_the_cpu():
    assert "MODEL.DEVICE cpu" in stops_before_any_process("--config-file", DEMO_CONFIG, *SMALL_OPTS, "MODEL.DEVICE", "cuda")


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["MODEL.EFL.SCAEL", "4"], "unknown config key MODEL.EFL.SCAEL (did you mean MODEL.EFL.SCALE"),
        (["MODEL.IMPROVED_BASELINE.CLS_LOSS", "efl"], "MODEL.IMPROVED_BASELINE.CLS_LOSS was renamed to MODEL.EFL.LOSS"),
        (["MODEL.EFL.SCALE", "four"], "MODEL.EFL.SCALE takes a float such as 8.0, got 'four'"),
        # an int for a float key is accepted: the run goes on to the next mistake
        (["MODEL.EFL.SCALE", "4", "SOLVER.MAX_ITER", "0"], "SOLVER.MAX_ITER must be at least 1 to train, got 0"),
        (["--num-gpus", "3"], "SOLVER.IMS_PER_BATCH 4 cannot be split evenly over 3 processes"),
        (["MODEL.EFL.LOSS", "eqfl"], "MODEL.EFL.LOSS 'eqfl' needs the IoU of each positive anchor's predicted box"),
        (["TEST.PRECISE_BN.ENABLED", "True"], "TEST.PRECISE_BN.ENABLED: precise BN statistics are not computed here"),
    ],
)
def test_config_mistakes_stop_in_one_line_before_any_process_starts(args, fragment, tmp_path):
    flags, opts = (args, []) if args[0].startswith("--") else ([], args)
    message = stops_before_any_process("--config-file", DEMO_CONFIG, *flags, *SMALL_OPTS, *opts, "OUTPUT_DIR", tmp_path / "out")
    assert fragment in message
    assert not (tmp_path / "out").exists()


def test_missing_config_file_stops_in_one_line():
    assert "config file not found: configs/nope.yaml" in stops_before_any_process("--config-file", "configs/nope.yaml")


def test_ints_are_accepted_for_float_keys_in_files_and_on_the_command_line(tmp_path):
    from efl.config import load_config

    (tmp_path / "s4.yaml").write_text(f"_BASE_: {DEMO_CONFIG}\nMODEL:\n  EFL:\n    SCALE: 4\n")
    assert load_config(str(tmp_path / "s4.yaml")).MODEL.EFL.SCALE == 4.0
    cfg = load_config(str(DEMO_CONFIG), ["MODEL.EFL.SCALE", "4", "MODEL.EFL.GAMMA_B", "1"])
    assert (cfg.MODEL.EFL.SCALE, cfg.MODEL.EFL.GAMMA_B) == (4.0, 1.0) and type(cfg.MODEL.EFL.SCALE) is float


@pytest.fixture
def lvis_in(tmp_path):
    """detectron2's LVIS v1 sets registered under ``tmp_path`` as $DETECTRON2_DATASETS (detectron2 registers them from
    the variable when it is imported); registered as before afterwards."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.lvis import get_lvis_instances_meta, register_lvis_instances

    names = ("lvis_v1_train", "lvis_v1_val")
    saved = {name: (DatasetCatalog[name], MetadataCatalog.get(name).as_dict()) for name in names}

    def reregister(root):
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        for name, split, folder in (("lvis_v1_train", "train", "train2017"), ("lvis_v1_val", "val", "val2017")):
            register_lvis_instances(
                name, get_lvis_instances_meta("lvis_v1"), f"{root}/lvis/lvis_v1_{split}.json", f"{root}/coco/"
            )

    reregister(tmp_path)
    yield tmp_path
    for name, (loader, metadata) in saved.items():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
        DatasetCatalog.register(name, loader)
        MetadataCatalog.get(name).set(**{k: v for k, v in metadata.items() if k != "name"})


def test_missing_lvis_data_says_where_to_put_it(lvis_in, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(lvis_in))
    message = stops_before_any_process("--config-file", LVIS_CONFIG, "MODEL.DEVICE", "cpu")
    for fragment in (f"{lvis_in}/lvis/lvis_v1_train.json", "lvis/lvis_v1_{train,val}.json", "coco/{train2017,val2017}"):
        assert fragment in message


def test_missing_lvis_images_are_reported_when_the_annotations_are_there(lvis_in):
    (lvis_in / "lvis").mkdir()
    for split in ("train", "val"):
        (lvis_in / "lvis" / f"lvis_v1_{split}.json").write_text("{}")
    (lvis_in / "coco" / "train2017").mkdir(parents=True)
    message = stops_before_any_process("--config-file", LVIS_CONFIG, "MODEL.DEVICE", "cpu")
    assert f"{lvis_in}/coco/val2017" in message and "lvis_v1_train.json" not in message.split("missing")[1]


def test_malformed_builtin_lvis_json_is_named_from_inside_the_run(lvis_in):
    """detectron2's own LVIS file is read only where the run trains (efl.engine.run, here in this process); its
    JSON error still names the file (train_net.py prints it as one line, as the corrupt weights below show)."""
    from efl import ConfigError, load

    (lvis_in / "lvis").mkdir()
    (lvis_in / "lvis" / "lvis_v1_train.json").write_text('{"images": [')
    for folder in ("train2017", "val2017"):
        (lvis_in / "coco" / folder).mkdir(parents=True)
    opts = [
        *SMALL_OPTS, "MODEL.RETINANET.NUM_CLASSES", "1203", "DATASETS.TRAIN", "('lvis_v1_train',)", "DATASETS.TEST",
        "()", "OUTPUT_DIR", str(lvis_in / "out"),
    ]  # fmt: skip
    args = Namespace(eval_only=False, resume=False, trust_pickle=False, config_file=str(DEMO_CONFIG), opts=opts)
    with pytest.raises(ConfigError, match=f"dataset file {lvis_in}/lvis/lvis_v1_train.json .'lvis_v1_train'. is not valid JSON"):
        run(args, load(str(DEMO_CONFIG), opts))


# ----- bad input found where the run loads it: the message reaches the command line as one line, without a traceback


def test_corrupt_weights_stop_in_one_line_without_torch_advice(tmp_path):
    weights = tmp_path / "model_final.pth"
    torch.save({"model": {"w": torch.zeros(1000)}}, weights)
    weights.write_bytes(weights.read_bytes()[:300])
    run = train_net("--config-file", DEMO_CONFIG, "--eval-only", *SMALL_OPTS, "MODEL.WEIGHTS", weights)
    assert_stops_with(run, f"cannot read {weights}", "truncated")
    assert "weights_only" not in run.stderr
