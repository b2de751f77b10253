#!/usr/bin/env python
"""
The embedded demo: train the focal-loss baseline and EFL with identical settings on the synthetic long-tailed
LVIS-format set, evaluate both with LVISEvaluator, and print one table (AP, APr, APc, APf and the difference).

    python tools/demo.py                   # GPU when one is present, else CPU
    python tools/demo.py --device cpu SOLVER.MAX_ITER 200

Each run is ``train_net.py`` in its own process, so detectron2's progress and ETA lines show as it trains.
Extra arguments are config overrides applied to both runs.
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
RUNS = {
    "focal loss": REPO / "configs/Synthetic/retinanet_R_18_FPN_demo_focal.yaml",
    "EFL": REPO / "configs/Synthetic/retinanet_R_18_FPN_demo_efl.yaml",
}
METRICS = ("AP", "APr", "APc", "APf")
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


def results_table(results: dict, seconds: dict) -> str:
    rows = [[name] + [f"{r[m]:.1f}" for m in METRICS] + [f"{seconds[name]:.0f}"] for name, r in results.items()]
    (base, base_r), (efl, efl_r) = results.items()
    rows.append([f"{efl} - {base}"] + [f"{efl_r[m] - base_r[m]:+.1f}" for m in METRICS] + [""])
    return tabulate(rows, headers=["loss", *METRICS, "train + eval s"], tablefmt="github")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--output-dir", type=Path, default=REPO / "output" / "demo")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="config overrides for both runs")
    args = parser.parse_args()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"

    results, seconds = {}, {}
    for name, config in RUNS.items():
        start = time.perf_counter()
        out = args.output_dir / config.stem.rsplit("_", 1)[-1]
        results[name] = train_and_evaluate(config, out, device, args.overrides)
        seconds[name] = time.perf_counter() - start

    cores = os.cpu_count()
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({cores} cores)"
    table = results_table(results, seconds)
    summary = f"Synthetic long-tailed set, {TEST_SET} (box AP, LVIS evaluation), on {where}:\n\n{table}\n"
    (args.output_dir / "results.md").write_text(summary)
    print("\n" + summary)


if __name__ == "__main__":
    main()
