#!/usr/bin/env python
"""
The embedded demo: train the focal-loss baseline and EFL with identical settings on the synthetic long-tailed
LVIS-format set, evaluate both with LVISEvaluator, and print one table (AP, APr, APc, APf and the differences).

    python tools/demo.py                       # RetinaNet: focal loss vs EFL; GPU when one is present
    python tools/demo.py --detector improved   # the paper's improved baseline: focal loss vs EFL vs EQFL
    python tools/demo.py --device cpu SOLVER.MAX_ITER 200

Each run is ``train_net.py`` in its own process, so detectron2's progress and ETA lines show as it trains.
Extra arguments are config overrides applied to every run.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

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
TRAIN_SET = "efl_synth_lt_train"
TEST_SET = "efl_synth_lt_val"


def train_and_evaluate(config: Path, output_dir: Path, device: str, overrides) -> dict:
    command = [
        sys.executable, str(REPO / "train_net.py"), "--config-file", str(config),
        "MODEL.DEVICE", device, "OUTPUT_DIR", str(output_dir), *overrides,
    ]  # fmt: skip
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)
    with open(output_dir / "inference" / TEST_SET / "results.json") as f:
        return json.load(f)["bbox"]


def plot_statistics(run_dir: Path, output: Path) -> None:
    """gamma_j and g_j of the EFL run against each class's training-image count (tools/plot_efl_stats.py)."""
    command = [
        sys.executable, str(REPO / "tools" / "plot_efl_stats.py"), str(run_dir / "model_final.pth"),
        "--dataset", TRAIN_SET, "--output", str(output),
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=REPO)


def results_table(results: dict, seconds: dict) -> str:
    """One row per run, then the difference of every later run from the first (the focal-loss baseline)."""
    rows = [[name] + [f"{r[m]:.1f}" for m in METRICS] + [f"{seconds[name]:.0f}"] for name, r in results.items()]
    (base, base_r), *others = results.items()
    for name, r in others:
        rows.append([f"{name} - {base}"] + [f"{r[m] - base_r[m]:+.1f}" for m in METRICS] + [""])
    return tabulate(rows, headers=["loss", *METRICS, "train + eval s"], tablefmt="github")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", choices=tuple(RUNS), default="retinanet")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--output-dir", type=Path, default=REPO / "output" / "demo")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="config overrides for both runs")
    args = parser.parse_args()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"

    results, seconds = {}, {}
    for name, config in RUNS[args.detector].items():
        start = time.perf_counter()
        out = args.output_dir / config.stem
        results[name] = train_and_evaluate(config, out, device, args.overrides)
        seconds[name] = time.perf_counter() - start
        if name == "EFL":
            plot_statistics(out, args.output_dir / f"efl_stats_{args.detector}.png")

    cores = os.cpu_count()
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({cores} cores)"
    table = results_table(results, seconds)
    summary = (
        f"{args.detector}: synthetic long-tailed set, {TEST_SET} (box AP, LVIS evaluation), on {where}:\n\n{table}\n"
    )
    (args.output_dir / f"results_{args.detector}.md").write_text(summary)
    print("\n" + summary)


if __name__ == "__main__":
    main()
