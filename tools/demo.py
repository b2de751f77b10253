#!/usr/bin/env python
"""
The embedded demo: train focal loss and EFL with identical settings on the synthetic long-tailed LVIS-format set,
evaluate both with LVISEvaluator, print one table (AP, APr, APc, APf and the differences) and draw three figures:
the gradient statistics the paper's way, AP by frequency group, and validation images holding rare classes with
each model's detections.

    python tools/demo.py                       # RetinaNet: focal loss vs EFL; GPU when one is present
    python tools/demo.py --detector improved   # the paper's improved baseline: focal loss vs EFL vs EQFL
    python tools/demo.py --device cpu SOLVER.MAX_ITER 200

Focal loss is trained as EFL with s = 0 (exactly focal loss), so that its checkpoint keeps the per-class gradient
statistics. Each run is ``train_net.py`` in its own process, so detectron2's progress and ETA lines show as it
trains. Extra arguments are config overrides applied to every run.
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from tabulate import tabulate  # noqa: E402

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.utils.visualizer import Visualizer  # noqa: E402

from efl.data import FREQUENCY_GROUPS, frequency_group_of  # noqa: E402

import plot_efl_stats  # noqa: E402  (tools/, beside this script)
import predict  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "Synthetic"
RUNS = {
    "retinanet": {
        "focal loss": CONFIGS / "retinanet_R_18_FPN_demo_focal.yaml",
        "EFL": CONFIGS / "retinanet_R_18_FPN_demo_efl.yaml",
    },
    "improved": {
        "focal loss": CONFIGS / "improved_R_18_demo_focal.yaml",
        "EFL": CONFIGS / "improved_R_18_demo_efl.yaml",
        "EQFL": CONFIGS / "improved_R_18_demo_eqfl.yaml",
    },
}
METRICS = ("AP", "APr", "APc", "APf")
# Detections drawn in the figure of rare-class images: low enough to show a rare class's hesitant scores.
FIGURE_CONFIDENCE = 0.3


def resolve_device(device: str) -> str:
    """"auto" is the GPU when one is present, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def describe_device(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores)"


def datasets_of(run_dir: Path) -> Tuple[str, str]:
    """The training and the (first) test set of a run, from the config.yaml that train_net.py wrote."""
    with open(run_dir / "config.yaml") as f:
        datasets = yaml.safe_load(f)["DATASETS"]
    return datasets["TRAIN"][0], datasets["TEST"][0]


def train_and_evaluate(
    config: Path, output_dir: Path, device: str, overrides: Sequence[str], flags: Sequence[str] = ()
) -> Dict[str, float]:
    """
    Train ``config`` with ``overrides`` into ``output_dir`` in a train_net.py process (with train_net.py's
    ``flags``: ``--eval-only`` evaluates instead), and return its box metrics.
    """
    command = [
        sys.executable, str(REPO / "train_net.py"), *flags, "--config-file", str(config),
        "MODEL.DEVICE", device, "OUTPUT_DIR", str(output_dir), *overrides,
    ]  # fmt: skip
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)
    with open(output_dir / "inference" / datasets_of(output_dir)[1] / "results.json") as f:
        return json.load(f)["bbox"]


def mechanism(run_dir: Path) -> Dict[str, float]:
    """
    Mean g_j and gamma_j by frequency group and Spearman(g_j, training images) at the end of a run
    (plot_efl_stats.summarise).
    """
    checkpoint = run_dir / "model_final.pth"
    pos_neg = plot_efl_stats.load_statistics(checkpoint)
    gamma_b, scale = plot_efl_stats.efl_hyperparameters(checkpoint)
    counts = plot_efl_stats.training_image_counts(datasets_of(run_dir)[0])
    return plot_efl_stats.summarise(pos_neg, counts, gamma_b + scale * (1.0 - pos_neg))


def describe_mechanism(summary: Dict[str, float]) -> str:
    return (
        f"mean g_j rare {summary['g_rare']:.2f}, common {summary['g_common']:.2f}, frequent "
        f"{summary['g_frequent']:.2f} (rare / frequent {summary['g_rare'] / summary['g_frequent']:.2f}); "
        f"Spearman(g_j, training images) {summary['spearman']:.2f}"
    )


def results_table(results: Dict[str, Dict[str, float]], seconds: Dict[str, float]) -> str:
    """One row per run, then the difference of every later run from the first (the focal-loss baseline)."""
    rows = [[name] + [f"{r[m]:.1f}" for m in METRICS] + [f"{seconds[name]:.0f}"] for name, r in results.items()]
    (base, base_r), *others = results.items()
    for name, r in others:
        rows.append([f"{name} - {base}"] + [f"{r[m] - base_r[m]:+.1f}" for m in METRICS] + [""])
    return tabulate(rows, headers=["loss", *METRICS, "train + eval s"], tablefmt="github", disable_numparse=True)


def plot_ap_by_group(results: Dict[str, Dict[str, float]], test_set: str, output: Path) -> None:
    """Grouped bars: AP, APr, APc and APf of every run."""
    figure, axis = plt.subplots(figsize=(6, 3.5), constrained_layout=True)
    width = 0.8 / len(results)
    for k, (name, r) in enumerate(results.items()):
        x = np.arange(len(METRICS)) + (k - (len(results) - 1) / 2) * width
        bars = axis.bar(x, [r[m] for m in METRICS], width, label=name)
        axis.bar_label(bars, fmt="%.1f", fontsize="small")
    axis.set_xticks(np.arange(len(METRICS)), ["all (AP)", "rare (APr)", "common (APc)", "frequent (APf)"])
    axis.set_ylabel("box AP")
    axis.set_title(f"{test_set}: AP by frequency group")
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    figure.savefig(output, dpi=100)
    plt.close(figure)


def rare_class_images(train_set: str, test_set: str, num_images: int) -> List[Dict]:
    """Test-set records, each holding a different rare class (the rarest classes first, ties by class id)."""
    counts = plot_efl_stats.training_image_counts(train_set)
    rare = sorted(
        (c for c, n in enumerate(counts) if FREQUENCY_GROUPS[frequency_group_of(n)] == "rare"),
        key=lambda c: (counts[c], c),
    )
    records = DatasetCatalog.get(test_set)
    chosen = []
    for cls in rare[:num_images]:
        record = next(r for r in records if any(a["category_id"] == cls for a in r["annotations"]))
        chosen.append(record)
    return chosen


def _ground_truth(record: Dict, test_set: str) -> np.ndarray:
    """(H * s, W * s, 3) RGB, s as in predict.draw_detections: the image with its annotated boxes and class names."""
    record = copy.deepcopy(record)
    for annotation in record["annotations"]:
        annotation.pop("segmentation", None)  # boxes only: filled polygons would hide the colours
    image = predict.load_image(Path(record["file_name"]))
    visualizer = Visualizer(image[:, :, ::-1], MetadataCatalog.get(test_set), scale=predict.drawing_scale(image))
    return visualizer.draw_dataset_dict(record).get_image()


def plot_rare_detections(runs: Dict[str, Path], device: str, output: Path, num_images: int = 4) -> None:
    """
    A grid of validation images holding rare classes: the ground truth in the first row, then one row per run with
    its detections scoring at least FIGURE_CONFIDENCE (tools/predict.py draws them).

    Args:
        runs: label -> OUTPUT_DIR of a trained run (its config.yaml and model_final.pth are used).
    """
    train_set, test_set = datasets_of(next(iter(runs.values())))
    records = rare_class_images(train_set, test_set, num_images)
    rows = {"ground truth": [_ground_truth(r, test_set) for r in records]}
    for label, run_dir in runs.items():
        cfg = predict.build_config(
            str(run_dir / "config.yaml"), ["MODEL.WEIGHTS", str(run_dir / "model_final.pth")], device
        )
        predictor, metadata = predict.build_predictor(cfg), predict.dataset_metadata(cfg)
        rows[label] = [
            predict.draw_detections(predictor, predict.load_image(Path(r["file_name"])), metadata, FIGURE_CONFIDENCE)
            for r in records
        ]
    figure, axes = plt.subplots(
        len(rows), len(records), figsize=(3 * len(records), 3 * len(rows)), squeeze=False, constrained_layout=True
    )
    for axes_row, (label, images) in zip(axes, rows.items()):
        for axis, image in zip(axes_row, images):
            axis.imshow(image)
            axis.set_xticks([])
            axis.set_yticks([])
        axes_row[0].set_ylabel(label, fontsize="large")
    figure.suptitle(f"Validation images with rare classes (detections with score >= {FIGURE_CONFIDENCE})")
    figure.savefig(output, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", choices=tuple(RUNS), default="retinanet")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--output-dir", type=Path, default=REPO / "output" / "demo")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="config overrides for every run")
    args = parser.parse_args()
    device = resolve_device(args.device)
    out = args.output_dir

    results, seconds, run_dirs = {}, {}, {}
    for name, config in RUNS[args.detector].items():
        start = time.perf_counter()
        run_dirs[name] = out / config.stem
        results[name] = train_and_evaluate(config, run_dirs[name], device, args.overrides)
        seconds[name] = time.perf_counter() - start

    focal_dir, efl_dir = run_dirs["focal loss"], run_dirs["EFL"]
    train_set, test_set = datasets_of(focal_dir)
    plot_efl_stats.main([
        str(focal_dir / "model_final.pth"), "--gamma-of", str(efl_dir / "model_final.pth"),
        "--dataset", train_set, "--output", str(out / f"efl_stats_{args.detector}.png"),
    ])  # fmt: skip
    plot_ap_by_group(results, test_set, out / f"ap_by_group_{args.detector}.png")
    plot_rare_detections(run_dirs, device, out / f"rare_detections_{args.detector}.png")

    summary = (
        f"{args.detector}: synthetic long-tailed set, {test_set} (box AP, LVIS evaluation), on "
        f"{describe_device(device)}:\n\n{results_table(results, seconds)}\n\n"
        f"Focal loss's gradient statistics: {describe_mechanism(mechanism(focal_dir))}\n"
    )
    (out / f"results_{args.detector}.md").write_text(summary)
    print("\n" + summary)


if __name__ == "__main__":
    main()
