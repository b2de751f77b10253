#!/usr/bin/env python
"""
Where the classification gradient of an experiment's runs went, by frequency group, over training. EFL keeps the
accumulated |dL/dz| of every class's positive and negative samples (its pos_grad and neg_grad buffers, for focal
loss too when it is trained as EFL with s = 0), so the difference between two checkpoints is what the gradients of
the iterations between them added. For each interval between the periodic checkpoints that tools/experiment.py
writes (every 200 iterations), and each group:
- share: the group's part of all the |gradient| the classification loss gave (positive and negative together);
- positive: the positive part of the group's own |gradient| (g_j, the ratio the loss equalises, is pos / neg);
- weight: the group's mean gamma_j / gamma_b at the end of the interval (EFL's weighting factor; 1 for focal loss).

    python tools/gradient_shares.py output/experiment-improved --detector improved

Each row is the mean over the seeds found in the folder (seed<N>/<config name>, as tools/experiment.py writes), over
the intervals between the iterations that all of them have a checkpoint of.
"""
import argparse
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

import plot_efl_stats
from demo import RUNS, datasets_of
from efl.data import FREQUENCY_GROUPS, frequency_group_of

# share, positive and weight of each group, in FREQUENCY_GROUPS order
COLUMNS = [f"{quantity} {group}" for quantity in ("share", "positive", "weight") for group in FREQUENCY_GROUPS]


def checkpoints(run_dir: Path) -> Dict[int, Path]:
    """The iterations trained -> the checkpoint, of the run's periodic checkpoints and its final one."""
    max_iter = plot_efl_stats.run_config(run_dir / "model_final.pth")["SOLVER"]["MAX_ITER"]
    names = (re.fullmatch(r"model_(\d+)\.pth", p.name) for p in run_dir.glob("model_[0-9]*.pth"))
    periodic = {int(name.group(1)) + 1: run_dir / name.group(0) for name in names if name}
    return {**{end: p for end, p in periodic.items() if end < max_iter}, max_iter: run_dir / "model_final.pth"}


def statistics(checkpoint: Path) -> Dict[str, np.ndarray]:
    """The (C,) pos_grad, neg_grad and pos_neg buffers of a checkpoint's EFL loss, in float64."""
    return {name: buffer.double().numpy() for name, buffer in plot_efl_stats.load_efl_buffers(checkpoint).items()}


def intervals(run_dir: Path, ends: Sequence[int]) -> List[Dict[str, float]]:
    """For each interval of ``run_dir``'s training from the end of the previous one (the first from iteration 0)
    to each of ``ends`` (iterations it has a checkpoint of): COLUMNS."""
    counts = plot_efl_stats.training_image_counts(datasets_of(run_dir)[0])
    groups = np.array([FREQUENCY_GROUPS[frequency_group_of(n)] for n in counts])
    gamma_b, scale = plot_efl_stats.efl_hyperparameters(run_dir / "model_final.pth")
    rows, before = [], None
    for end in ends:
        now = statistics(checkpoints(run_dir)[end])
        pos = now["pos_grad"] - (before["pos_grad"] if before else 0.0)
        neg = now["neg_grad"] - (before["neg_grad"] if before else 0.0)
        weight = (gamma_b + scale * (1.0 - now["pos_neg"])) / gamma_b
        total = (pos + neg).sum()
        row = {}
        for group in FREQUENCY_GROUPS:
            members = groups == group
            received = (pos[members] + neg[members]).sum()
            row[f"share {group}"] = 100.0 * received / total
            row[f"positive {group}"] = 100.0 * pos[members].sum() / received
            row[f"weight {group}"] = float(weight[members].mean())
        rows.append(row)
        before = now
    return rows


def table(runs: Sequence[Path]) -> str:
    """
    The Markdown table of the mean over ``runs`` (the same loss, several seeds) of the COLUMNS of each interval
    between the iterations that every run has a checkpoint of.
    """
    ends = sorted(set.intersection(*(set(checkpoints(run)) for run in runs)))
    per_run = [intervals(run, ends) for run in runs]
    header = ["iterations", *(column if column.startswith("weight") else f"{column} %" for column in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for k, (start, end) in enumerate(zip([0, *ends], ends)):
        cells = [f"{start}-{end}"]
        for column in COLUMNS:
            mean = float(np.mean([rows[k][column] for rows in per_run]))
            cells.append(f"{mean:.2f}" if column.startswith("weight") else f"{mean:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", type=Path, help="an experiment's --output-dir")
    parser.add_argument("--detector", choices=tuple(RUNS), default="retinanet")
    args = parser.parse_args(argv)
    seeds = sorted(args.experiment.glob("seed*"), key=lambda p: int(p.name[len("seed") :]))
    text = []
    for arm, config in RUNS[args.detector].items():
        runs = [seed / config.stem for seed in seeds if (seed / config.stem / "model_final.pth").is_file()]
        if not runs:
            continue
        seeds_text = ", ".join(run.parent.name[len("seed") :] for run in runs)
        text.append(f"{arm} (seeds {seeds_text}):\n\n{table(runs)}\n")
    print("\n".join(text))
    return "\n".join(text)


if __name__ == "__main__":
    main()
