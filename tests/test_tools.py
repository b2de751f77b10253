"""The tools: make_tables.py and plot_efl_stats.py on fixture runs, predict.py on an image, experiment.py (and the
demo's figures) on 2-iteration runs."""
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

import demo
import experiment
import gradient_shares
import make_tables
import plot_efl_stats
import predict
import warm_start
from conftest import DEMO_CONFIG, REPO, SMALL_OPTS, small_cfg
from efl import ConfigError


def fake_run(root, name, ap, apr, apc, apf, dataset="lvis_v1_val"):
    run = root / name
    (run / "inference" / dataset).mkdir(parents=True)
    results = {"bbox": {"AP": ap, "AP50": 0.0, "APr": apr, "APc": apc, "APf": apf}}
    (run / "inference" / dataset / "results.json").write_text(json.dumps(results))
    return run


def test_table_puts_the_authors_numbers_and_our_differences_side_by_side(tmp_path):
    ours = fake_run(tmp_path, "improved_baseline_R_50_24ep_efl", 26.0, 21.0, 25.0, 32.4)
    other = fake_run(tmp_path, "improved_baseline_R_50_24ep_efl_s4", 25.25, 18.0, 24.0, 31.0)
    table = make_tables.render([ours, other]).splitlines()
    assert table[0].startswith("| run | AP | APr | APc | APf | authors' AP |")
    assert table[2] == (
        "| improved_baseline_R_50_24ep_efl | 26.0 | 21.0 | 25.0 | 32.4 | 27.5 | 20.2 | 26.1 | 32.4 "
        "| -1.5 | +0.8 | -1.1 | +0.0 |"
    )
    assert table[3] == "| improved_baseline_R_50_24ep_efl_s4 | 25.2 | 18.0 | 24.0 | 31.0 | - | - | - | - | - | - | - | - |"


def test_a_run_without_results_is_named(tmp_path):
    (tmp_path / "not_evaluated").mkdir()
    run = subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_tables.py"), str(tmp_path / "not_evaluated")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode != 0 and "not_evaluated" in run.stderr and "Traceback" not in run.stderr


def test_a_run_evaluated_on_several_datasets_needs_dataset(tmp_path):
    run = fake_run(tmp_path, "r", 1, 2, 3, 4)
    fake_run(tmp_path, "r2", 1, 2, 3, 4)
    (run / "inference" / "other").mkdir()
    (run / "inference" / "other" / "results.json").write_text((run / "inference" / "lvis_v1_val" / "results.json").read_text())
    with pytest.raises(FileNotFoundError, match="--dataset"):
        make_tables.render([run])
    assert "| r | 1.0 | 2.0 |" in make_tables.render([run], dataset="lvis_v1_val")


def fake_checkpoint(run_dir, pos_neg, scale):
    run_dir.mkdir()
    torch.save({"model": {"cls_loss.pos_neg": pos_neg, "cls_loss.pos_grad": torch.ones(8)}}, run_dir / "model_final.pth")
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"MODEL": {"EFL": {"GAMMA_B": 2.0, "SCALE": scale}}}))
    return run_dir / "model_final.pth"


def test_plot_of_focal_g_beside_efl_gamma(tmp_path, capsys):
    # efl_synth_test_train's classes have 104, 25, 4, 102, 8, 40, 12, 2 training images.
    focal = fake_checkpoint(tmp_path / "focal", torch.tensor([1.0, 0.7, 0.3, 0.9, 0.4, 0.8, 0.6, 0.2]), 0.0)
    efl = fake_checkpoint(tmp_path / "efl", torch.linspace(0.1, 1.0, 8), 8.0)
    with open(focal.parent / "metrics.json", "w") as f:
        for iteration in (19, 39):
            f.write(json.dumps({"iteration": iteration, "efl/g_rare": 0.5, "efl/g_frequent": 0.9}) + "\n")
    output = tmp_path / "stats.png"
    summary = plot_efl_stats.main(
        [str(focal), "--gamma-of", str(efl), "--dataset", "efl_synth_test_train", "--output", str(output)]
    )
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and output.stat().st_size > 10_000
    assert summary["g_rare"] == pytest.approx(0.3) and summary["g_frequent"] == pytest.approx(0.95)
    assert summary["g_common"] == pytest.approx(0.7)
    assert summary["spearman"] == pytest.approx(1.0)  # g_j ranks the classes exactly as their image counts
    assert "rare 0.300, common 0.700, frequent 0.950; Spearman(g_j, training images) 1.00" in capsys.readouterr().out


def test_spearman_averages_tied_ranks():
    assert plot_efl_stats.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert plot_efl_stats.spearman([4, 3, 2, 1], [1, 10, 100, 1000]) == pytest.approx(-1.0)
    # ranks (0.5, 0.5, 2, 3) against (0, 1, 2, 3): Pearson of the ranks
    assert plot_efl_stats.spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([0.5, 0.5, 2, 3], [0, 1, 2, 3])[0, 1])
    assert math.isnan(plot_efl_stats.spearman([1, 1, 1], [1, 2, 3]))


def test_plot_refuses_a_checkpoint_without_efl_statistics(tmp_path):
    torch.save({"model": {"head.cls_score.bias": torch.zeros(8)}}, tmp_path / "focal.pth")
    with pytest.raises(SystemExit, match="no EFL statistics.*SCALE 0.0"):
        plot_efl_stats.main([str(tmp_path / "focal.pth"), "--dataset", "efl_synth_test_train", "--gamma-b", "2", "--scale", "8"])


@pytest.fixture(scope="module")
def untrained_weights(tmp_path_factory):
    """The test-size demo model, as initialised (predict.py needs weights, not good ones)."""
    from detectron2.modeling import build_model

    path = tmp_path_factory.mktemp("weights") / "model.pth"
    torch.save({"model": build_model(small_cfg()).state_dict()}, path)
    return path


def predict_args(weights, *args):
    return ["--config-file", str(DEMO_CONFIG), *SMALL_OPTS, "MODEL.WEIGHTS", str(weights), *args]


def test_predict_draws_an_image_and_a_folder(untrained_weights, tmp_path):
    images = [r["file_name"] for r in DatasetCatalog.get("efl_synth_test_val")[:2]]
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.open(images[1]).save(folder / "second.png")
    (folder / "notes.txt").write_text("not an image")  # skipped: not an image suffix
    out = tmp_path / "out"
    predict.main(predict_args(untrained_weights, "--input", images[0], str(folder), "--output", str(out), "--confidence", "0"))
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{images[0].rsplit('/', 1)[1][:-4]}.png", "second.png"])
    drawing = np.asarray(Image.open(out / "second.png"))
    assert drawing.shape == (480, 480, 3)  # the 128 px image, enlarged for legible labels
    # With every detection drawn (confidence 0), the drawing differs from the image.
    enlarged = np.asarray(Image.open(images[1]).resize((480, 480), Image.NEAREST)).astype(int)
    assert np.abs(drawing.astype(int) - enlarged).max() > 100


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda d: d / "missing.jpg", "input not found: .*missing.jpg"),
        (lambda d: (d / "broken.jpg").write_text("not a jpeg") and d / "broken.jpg", "cannot read image .*broken.jpg"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no image files .* in folder .*empty"),
    ],
)
def test_predict_stops_with_one_line_for_a_bad_input(untrained_weights, tmp_path, make_input, message):
    path = make_input(tmp_path)
    with pytest.raises(SystemExit, match=f"^predict.py: error: {message}"):
        predict.main(predict_args(untrained_weights, "--input", str(path), "--output", str(tmp_path / "out")))


def test_predict_names_missing_weights(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "image.png")
    args = predict_args(tmp_path / "nope.pth", "--input", str(tmp_path / "image.png"), "--output", str(tmp_path / "out"))
    with pytest.raises(SystemExit, match="MODEL.WEIGHTS file not found: .*nope.pth"):
        predict.main(args)


def test_predict_refuses_weights_that_do_not_fit_the_model(untrained_weights, tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "image.png")
    args = predict_args(untrained_weights, "MODEL.RETINANET.NUM_CONVS", "2", "--input", str(tmp_path / "image.png"))
    with pytest.raises(SystemExit, match="^predict.py: error: .*missing"):
        predict.main([*args, "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_predict_reports_a_missing_input_in_one_line_with_a_failing_status(untrained_weights, tmp_path):
    with pytest.raises(SystemExit) as stop:
        predict.main(predict_args(untrained_weights, "--input", "nope.jpg", "--output", str(tmp_path)))
    assert stop.value.code == "predict.py: error: input not found: nope.jpg"  # printed to stderr, exit status 1


@pytest.fixture
def named_set(tmp_path):
    """
    A COCO-format set of 2 images registered by name, whose category ids (73, 5, 12) are listed out of order and
    whose only annotation names a category it lacks: loading it would stop, reading its class names must not.
    """
    for name in ("a.png", "b.png"):
        Image.new("RGB", (120, 90), (40, 200, 90)).save(tmp_path / name)
    data = {
        "categories": [{"id": 73, "name": "zebra"}, {"id": 5, "name": "apple"}, {"id": 12, "name": "kiwi"}],
        "images": [{"id": i, "file_name": n, "height": 90, "width": 120} for i, n in enumerate(("a.png", "b.png"))],
        "annotations": [{"id": 1, "image_id": 0, "category_id": 99, "bbox": [1, 1, 5, 5]}],
    }
    (tmp_path / "set.json").write_text(json.dumps(data))
    yield "predict_named_val", tmp_path
    for catalog in (DatasetCatalog, MetadataCatalog):
        if "predict_named_val" in catalog.list():
            catalog.remove("predict_named_val")


def test_predict_names_the_classes_of_a_registered_set_without_loading_it(named_set, monkeypatch, tmp_path):
    from detectron2.modeling import build_model

    name, root = named_set
    register = f"(('{name}', 'coco', '{root / 'set.json'}', '{root}'),)"
    opts = ["MODEL.RETINANET.NUM_CLASSES", "3", "DATASETS.REGISTER", register, "DATASETS.TEST", f"('{name}',)"]
    torch.save({"model": build_model(small_cfg(*opts)).state_dict()}, tmp_path / "model.pth")
    drawn = []  # (the class names in the Visualizer's metadata, the labels it draws)

    class RecordingVisualizer(predict.Visualizer):
        def overlay_instances(self, *, labels=None, **kwargs):
            drawn.append((self.metadata.thing_classes, labels))
            return super().overlay_instances(labels=labels, **kwargs)

    monkeypatch.setattr(predict, "Visualizer", RecordingVisualizer)
    args = predict_args(tmp_path / "model.pth", *opts, "--input", str(root / "a.png"), "--confidence", "0")
    predict.main([*args, "--output", str(tmp_path / "out"), "--json", str(tmp_path / "detections.json")])
    (record,) = json.loads((tmp_path / "detections.json").read_text())
    assert record["file"] == str(root / "a.png") and len(record["boxes"]) == len(record["scores"]) > 0
    assert record["names"] == [["apple", "kiwi", "zebra"][c] for c in record["classes"]]
    ((thing_classes, labels),) = drawn
    assert thing_classes == ["apple", "kiwi", "zebra"]
    assert [label.rsplit(" ", 1)[0] for label in labels] == record["names"]  # labels are "<name> <score>%"
    assert "thing_dataset_id_to_contiguous_id" not in MetadataCatalog.get(name).as_dict()  # set by loading it


def test_class_names_read_the_categories_alone_wherever_they_are(tmp_path):
    from efl.data import class_names, register_dataset

    categories = [{"id": 3, "name": "pear"}, {"id": 1, "name": "fig"}]
    images = [{"id": i, "file_name": f'"categories": [{i}].png', "height": 8, "width": 8} for i in range(3000)]
    files = {"first": {"categories": categories, "images": images}, "last": {"images": images, "categories": categories}}
    for order, data in files.items():
        (tmp_path / f"{order}.json").write_text(json.dumps({**data, "annotations": "not read"}))
        register_dataset(f"names_{order}", "lvis", str(tmp_path / f"{order}.json"), str(tmp_path))
        try:
            assert class_names(f"names_{order}") == ["fig", "pear"]
        finally:
            DatasetCatalog.remove(f"names_{order}")
            MetadataCatalog.remove(f"names_{order}")
    assert class_names("efl_synth_test_val")[:2] == ["red_circle", "light_red_circle"]  # set at registration
    with pytest.raises(ConfigError, match="dataset 'nope' is not registered"):
        class_names("nope")


def warm_subprocess_run(command, check, cwd):
    """The tools' ``subprocess.run(command, check=True, cwd=...)`` of train_net.py, forked by warm_start.py's zygote."""
    run = warm_start.run(command, dict(os.environ), cwd=cwd)
    sys.stdout.write(run.stdout)  # where the tool's own run writes (its parent's streams), which pytest shows on failure
    sys.stderr.write(run.stderr)
    if check and run.returncode:
        raise subprocess.CalledProcessError(run.returncode, command, run.stdout, run.stderr)
    return run


@pytest.fixture(scope="module")
def experiment_runs(tmp_path_factory):
    """tools/experiment.py on the test set: one seed of focal loss and EFL, 2 iterations each, each in a train_net.py
    process of its own."""
    out = tmp_path_factory.mktemp("experiment")
    opts = [*SMALL_OPTS, "SOLVER.MAX_ITER", "2"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo, "subprocess", SimpleNamespace(run=warm_subprocess_run))
        return out, experiment.main(["--seeds", "7", "--device", "cpu", "--output-dir", str(out), *opts])


def test_experiment_trains_each_loss_with_the_seed_and_tabulates_them(experiment_runs):
    out, results = experiment_runs
    assert list(results) == [7] and list(results[7]) == ["focal loss", "EFL"]
    for arm, config in demo.RUNS["retinanet"].items():
        with open(out / "seed7" / config.stem / "config.yaml") as f:
            cfg = yaml.safe_load(f)
        assert cfg["SEED"] == 7 and cfg["MODEL"]["EFL"]["SCALE"] == (0.0 if arm == "focal loss" else 8.0)
        assert 0.0 <= results[7][arm]["g_rare"] <= 1.0 and 0.0 <= results[7][arm]["APr"] <= 100.0
        # gamma_j = gamma_b + s (1 - g_j): 2 for focal loss, at least 2 for EFL
        gamma = 2.0 + (0.0 if arm == "focal loss" else 8.0) * (1.0 - results[7][arm]["g_rare"])
        assert results[7][arm]["gamma_rare"] == pytest.approx(gamma)
    lines = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("|")]
    assert lines[0] == (
        "| seed | loss | AP | APr | APc | APf | g rare | g common | g frequent | γ rare | γ common | γ frequent "
        "| Spearman |"
    )
    assert len(lines) == 2 + 2 + 3 and lines[2].startswith("| 7 | focal loss | ")


def test_experiment_of_the_improved_baseline_has_a_difference_row_for_each_loss(monkeypatch, tmp_path):
    trained = []

    def fake_training(config, run_dir, device, overrides, flags=()):
        # every run resumes from its checkpoints, so that the same command continues an interrupted experiment
        assert flags == ["--resume"] and overrides[:2] == ["SOLVER.CHECKPOINT_PERIOD", "200"]
        trained.append((config.stem, overrides[-1]))
        return {"AP": 1.0, "APr": 2.0, "APc": 3.0, "APf": 4.0}

    monkeypatch.setattr(experiment, "train_and_evaluate", fake_training)
    monkeypatch.setattr(experiment, "mechanism", lambda run_dir: dict.fromkeys(experiment.STATISTICS, 0.5))
    monkeypatch.setattr(experiment, "datasets_of", lambda run_dir: ("efl_synth_lt_train", "efl_synth_lt_val"))
    args = ["--detector", "improved", "--arms", "EQFL", "--seeds", "1", "2", "--output-dir", str(tmp_path), "X", "1"]
    results = experiment.main(args)
    assert trained == [(f"improved_R_18_demo_{loss}", seed) for seed in "12" for loss in ("focal", "eqfl")]
    assert list(results[1]) == ["focal loss", "EQFL"]
    text = (tmp_path / "results.md").read_text()
    assert "| mean ± std | EQFL - focal loss | +0.0 ± 0.0 |" in text and "Overrides: X 1." in text
    with pytest.raises(SystemExit):
        experiment.main(["--detector", "retinanet", "--arms", "EQFL"])


def test_experiment_reevaluates_the_runs_of_an_earlier_one(monkeypatch, tmp_path):
    """--reevaluate DIR: each run evaluates (--eval-only) the final weights of the same seed and loss in DIR, and
    its statistics are those weights'."""
    evaluated, read = [], []

    def fake_evaluation(config, run_dir, device, overrides, flags=()):
        evaluated.append((config.stem, run_dir, list(overrides), list(flags)))
        return {"AP": 1.0, "APr": 2.0, "APc": 3.0, "APf": 4.0}

    monkeypatch.setattr(experiment, "train_and_evaluate", fake_evaluation)
    monkeypatch.setattr(experiment, "mechanism", lambda run_dir: read.append(run_dir) or dict.fromkeys(experiment.STATISTICS, 0.5))
    monkeypatch.setattr(experiment, "datasets_of", lambda run_dir: ("efl_synth_lt_train", "efl_synth_lt_val"))
    trained = tmp_path / "trained"
    experiment.main(["--detector", "improved", "--arms", "EFL", "--seeds", "3", "--output-dir", str(tmp_path / "again"),
                     "--reevaluate", str(trained), "MODEL.IMPROVED_BASELINE.IOU_BRANCH", "False"])  # fmt: skip
    for (stem, run_dir, overrides, flags), source in zip(evaluated, read):
        assert run_dir == tmp_path / "again" / "seed3" / stem and flags == ["--eval-only"]
        assert overrides == ["MODEL.IMPROVED_BASELINE.IOU_BRANCH", "False",
                             "MODEL.WEIGHTS", str(trained / "seed3" / stem / "model_final.pth"), "SEED", "3"]  # fmt: skip
        assert source == trained / "seed3" / stem
    assert [e[0] for e in evaluated] == ["improved_R_18_demo_focal", "improved_R_18_demo_efl"]
    assert f"The runs trained in {trained}, evaluated again." in (tmp_path / "again" / "results.md").read_text()


def test_experiment_table_gives_mean_and_std_over_seeds_and_of_the_paired_difference():
    def run(ap, apr, g_rare):
        return {"AP": ap, "APr": apr, "APc": 30.0, "APf": 40.0, "g_rare": g_rare, "g_common": 0.8, "g_frequent": 1.0,
                "gamma_rare": 2.0, "gamma_common": 2.0, "gamma_frequent": 2.0, "spearman": math.nan}  # fmt: skip

    results = {
        1: {"focal loss": run(20.0, 10.0, 0.4), "EFL": run(21.0, 13.0, 0.9), "EQFL": run(20.0, 11.0, 0.9)},
        2: {"focal loss": run(22.0, 12.0, 0.6), "EFL": run(22.0, 13.0, 0.9), "EQFL": run(24.0, 12.0, 0.9)},
    }
    lines = experiment.render(results).splitlines()
    assert lines[2] == "| 1 | focal loss | 20.0 | 10.0 | 30.0 | 40.0 | 0.40 | 0.80 | 1.00 | 2.00 | 2.00 | 2.00 | - |"
    assert lines[8] == (
        "| mean ± std | focal loss | 21.0 ± 1.4 | 11.0 ± 1.4 | 30.0 ± 0.0 | 40.0 ± 0.0 | 0.50 | 0.80 | 1.00 | 2.00 "
        "| 2.00 | 2.00 | - |"
    )
    # EFL - focal loss per seed: AP +1 and 0, APr +3 and +1; EQFL: AP 0 and +2, APr +1 and 0
    assert lines[11] == "| mean ± std | EFL - focal loss | +0.5 ± 0.7 | +2.0 ± 1.4 | +0.0 ± 0.0 | +0.0 ± 0.0 |" + "  |" * 7
    assert lines[12] == "| mean ± std | EQFL - focal loss | +1.0 ± 1.4 | +0.5 ± 0.7 | +0.0 ± 0.0 | +0.0 ± 0.0 |" + "  |" * 7


def test_demo_figures_of_two_runs(experiment_runs, tmp_path):
    out, results = experiment_runs
    runs = {arm: out / "seed7" / config.stem for arm, config in demo.RUNS["retinanet"].items()}
    demo.plot_ap_by_group(results[7], "efl_synth_test_val", tmp_path / "ap.png")
    demo.plot_rare_detections(runs, "cpu", tmp_path / "rare.png", num_images=2)
    for name in ("ap.png", "rare.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # ground truth, focal loss, EFL: 3 rows of 2 images
    width, height = Image.open(tmp_path / "rare.png").size
    assert height > width


def fake_statistics_run(run_dir, checkpoints):
    """A run of the 8-class test set (frequent 0, 3; common 1, 5, 6; rare 2, 4, 7) trained with EFL (gamma_b 2,
    s 8) for 4 iterations: {file name: (pos_grad, neg_grad, pos_neg)}."""
    run_dir.mkdir(parents=True)
    config = {
        "DATASETS": {"TRAIN": ["efl_synth_test_train"], "TEST": ["efl_synth_test_val"]},
        "SOLVER": {"MAX_ITER": 4},
        "MODEL": {"EFL": {"LOSS": "efl", "GAMMA_B": 2.0, "SCALE": 8.0}},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    for name, (pos, neg, g) in checkpoints.items():
        buffers = {"pos_grad": pos, "neg_grad": neg, "pos_neg": g}
        torch.save({"model": {f"cls_loss.{k}": torch.tensor(v) for k, v in buffers.items()}}, run_dir / name)


def test_gradient_shares_by_group_over_the_intervals_every_seed_has(tmp_path):
    frequent, common, rare = [0, 3], [1, 5, 6], [2, 4, 7]

    def grads(values):  # per group -> per class
        out = [0.0] * 8
        for members, value in zip((frequent, common, rare), values):
            for c in members:
                out[c] = value / len(members)
        return out

    half = [0.5] * 8
    # seed 1: by iteration 2, frequent 6, common 3, rare 1 (|grad| of positives 3, 1, 0.5 of them); by 4, twice that
    first = (grads([3, 1, 0.5]), grads([3, 2, 0.5]), half)
    final = (grads([6, 2, 1]), grads([6, 4, 1]), [1.0] * 8)
    fake_statistics_run(tmp_path / "seed1" / "improved_R_18_demo_efl", {"model_0000001.pth": first, "model_final.pth": final})
    # seed 2: the same, and a checkpoint at iteration 1 that seed 1 lacks, which the table passes over
    fake_statistics_run(
        tmp_path / "seed2" / "improved_R_18_demo_efl",
        {"model_0000000.pth": (grads([1, 1, 1]), grads([1, 1, 1]), half), "model_0000001.pth": first, "model_final.pth": final},
    )
    text = gradient_shares.main([str(tmp_path), "--detector", "improved"])
    assert text.startswith("EFL (seeds 1, 2):")
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| 0-2") or line.startswith("| 2-4")]
    # columns: share rare, common, frequent %; positive rare, common, frequent %; weight rare, common, frequent
    expected = ["10.0", "30.0", "60.0", "50.0", "33.3", "50.0", "3.00", "3.00", "3.00"]
    assert [cell.strip(" |") for cell in rows[0][1:]] == expected
    assert [cell.strip(" |") for cell in rows[1][1:]] == expected[:6] + ["1.00", "1.00", "1.00"]
