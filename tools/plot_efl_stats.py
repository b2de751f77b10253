#!/usr/bin/env python
"""
What EFL's statistics say about each class, drawn the paper's way (its Figure 1): the gradient ratio g_j of every
class, classes sorted by their number of training images and coloured by LVIS frequency group, beside the focusing
factor gamma_j = gamma_b + s (1 - g_j), and the mean g_j of each group over training (from the metrics.json that
train_net.py writes beside the checkpoint). It also prints the mean g_j of each group and the Spearman correlation
of g_j with the class's training-image count.

    python tools/plot_efl_stats.py output/demo/retinanet_R_18_FPN_demo_focal/model_final.pth \\
        --gamma-of output/demo/retinanet_R_18_FPN_demo_efl/model_final.pth \\
        --dataset efl_synth_lt_train --output efl_stats.png

g_j is read from the first checkpoint: train focal loss as EFL with MODEL.EFL.SCALE 0.0 (exactly focal loss) to
keep its statistics. gamma_j is that of --gamma-of (default: the same checkpoint); gamma_b and s come from the
config.yaml beside it (or --gamma-b / --scale), and so are the datasets it registered (DATASETS.REGISTER). Checkpoints
are read with weights_only=True (--trust-pickle reads a file that needs full unpickling, which runs code from it).
"""
import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import efl  # noqa: E402, F401  (registers the synthetic datasets)
from efl.data import FREQUENCY_GROUPS, class_image_count, frequency_group_of, register_datasets  # noqa: E402
from efl.engine.safe_loading import load_torch_file  # noqa: E402

COLOURS = {"rare": "tab:red", "common": "tab:orange", "frequent": "tab:blue"}


def load_efl_buffers(checkpoint: Path, trust_pickle: bool = False) -> Dict[str, torch.Tensor]:
    """The (C,) statistics buffers of the EFL loss in a detectron2 checkpoint, by name: "pos_neg" (g_j), and
    "pos_grad" and "neg_grad" where it holds them."""
    state = load_torch_file(str(checkpoint), trust_pickle=trust_pickle)
    state = state.get("model", state)
    keys = [k for k in state if k.endswith("cls_loss.pos_neg")]
    if len(keys) != 1:
        raise ValueError(
            f"{checkpoint} holds no EFL statistics (no *cls_loss.pos_neg): train focal loss as EFL with "
            "MODEL.EFL.SCALE 0.0 to keep them"
        )
    prefix = keys[0][: -len("pos_neg")]
    return {name: state[prefix + name] for name in ("pos_grad", "neg_grad", "pos_neg") if prefix + name in state}


def load_statistics(checkpoint: Path, trust_pickle: bool = False) -> torch.Tensor:
    """The (C,) g_j (``pos_neg``) buffer of the EFL loss in a detectron2 checkpoint."""
    return load_efl_buffers(checkpoint, trust_pickle)["pos_neg"].float()


def run_config(checkpoint: Path) -> Optional[dict]:
    """The config.yaml that train_net.py wrote beside the checkpoint, as a dict; None when there is none."""
    config = checkpoint.parent / "config.yaml"
    if not config.is_file():
        return None
    with open(config) as f:
        return yaml.safe_load(f)


def efl_hyperparameters(checkpoint: Path) -> Tuple[float, float]:
    """
    gamma_b and s of the run, from the config.yaml beside the checkpoint: MODEL.EFL's, or for MODEL.EFL.LOSS
    "focal" (EFL with s = 0) the focal-loss gamma and 0.
    """
    config = run_config(checkpoint)
    if config is None:
        raise ValueError(f"no {checkpoint.parent / 'config.yaml'} to read gamma_b and s from: pass --gamma-b and --scale")
    efl_cfg = config["MODEL"]["EFL"]
    if efl_cfg.get("LOSS") == "focal":
        return float(config["MODEL"]["RETINANET"]["FOCAL_LOSS_GAMMA"]), 0.0
    return float(efl_cfg["GAMMA_B"]), float(efl_cfg["SCALE"])


def training_image_counts(dataset: str) -> List[int]:
    """The number of training images of each class, in category-id order, from the dataset's metadata."""
    counts = class_image_count(dataset)
    if counts is None:
        raise ValueError(f"dataset '{dataset}' has no class_image_count metadata (an LVIS-type training set)")
    return [c["image_count"] for c in sorted(counts, key=lambda c: c["id"])]


def _group(image_count: int) -> str:
    return FREQUENCY_GROUPS[frequency_group_of(image_count)]


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing their mean rank (as Spearman's correlation needs)."""
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    for value in np.unique(values):
        ranks[values == value] = ranks[values == value].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (nan when either side is constant)."""
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def summarise(
    pos_neg: torch.Tensor, image_counts: Sequence[int], gamma: Optional[torch.Tensor] = None
) -> Dict[str, float]:
    """
    Args:
        pos_neg: (C,) g_j of each class.
        image_counts: (C,) training images of each class.
        gamma: optional (C,) focusing factor gamma_j of each class.

    Returns:
        "g_rare", "g_common", "g_frequent": the mean g_j of each LVIS frequency group (nan when empty);
        with ``gamma``, "gamma_rare", "gamma_common", "gamma_frequent" likewise;
        "spearman": the rank correlation of g_j with the image count (so also with its log).
    """
    groups = np.array([_group(n) for n in image_counts])
    summary = {}
    for prefix, values in (("g", pos_neg), ("gamma", gamma)):
        if values is None:
            continue
        v = values.double().numpy()
        for name in FREQUENCY_GROUPS:
            summary[f"{prefix}_{name}"] = float(v[groups == name].mean()) if (groups == name).any() else math.nan
    summary["spearman"] = spearman(pos_neg.double().numpy(), image_counts)
    return summary


def read_group_curves(metrics_json: Path) -> Dict[str, Tuple[List[int], List[float]]]:
    """(iterations, mean g_j) of each frequency group, as logged by EFLRetinaNet into train_net.py's metrics.json."""
    curves: Dict[str, Tuple[List[int], List[float]]] = {}
    with open(metrics_json) as f:
        for line in f:
            record = json.loads(line)
            for name in FREQUENCY_GROUPS:
                if f"efl/g_{name}" in record:
                    iterations, values = curves.setdefault(name, ([], []))
                    iterations.append(record["iteration"])
                    values.append(record[f"efl/g_{name}"])
    return curves


def _bars_by_frequency(axis, values: torch.Tensor, image_counts: Sequence[int], ylabel: str) -> None:
    """One bar per class, the most frequent first, coloured by frequency group."""
    order = sorted(range(len(image_counts)), key=lambda c: -image_counts[c])
    groups = [_group(image_counts[c]) for c in order]
    axis.bar(range(len(order)), values[order].tolist(), color=[COLOURS[g] for g in groups], width=0.85)
    for name in FREQUENCY_GROUPS:  # legend entries
        axis.bar([0], [0], color=COLOURS[name], label=name)
    axis.set_xlabel("classes, sorted by training images (most first)")
    axis.set_ylabel(ylabel)
    axis.set_xlim(-0.6, len(order) - 0.4)
    axis.grid(axis="y", alpha=0.3)


def plot(
    pos_neg: torch.Tensor,
    gamma: torch.Tensor,
    image_counts: Sequence[int],
    curves: Dict[str, Dict[str, Tuple[List[int], List[float]]]],
    titles: Tuple[str, str],
    output: Path,
) -> None:
    """
    Args:
        pos_neg, gamma: (C,) g_j and gamma_j to draw as bars.
        image_counts: (C,) training images of each class.
        curves: per run label, the group curves of :func:`read_group_curves` (no third panel when empty).
        titles: of the g_j and gamma_j panels.
    """
    panels = 3 if curves else 2
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), constrained_layout=True)
    _bars_by_frequency(axes[0], pos_neg, image_counts, "$g_j$ (positive / negative gradient)")
    axes[0].set_ylim(0, 1.05)
    axes[0].set_title(titles[0])
    axes[0].legend()
    _bars_by_frequency(axes[1], gamma, image_counts, "focusing factor $\\gamma_j$")
    axes[1].set_title(titles[1])
    styles = ("-", "--", ":", "-.")
    for (label, run_curves), style in zip(curves.items(), styles):
        for name in FREQUENCY_GROUPS:
            if name in run_curves:
                iterations, values = run_curves[name]
                axes[2].plot(iterations, values, style, color=COLOURS[name], label=f"{label}: {name}")
    if curves:
        axes[2].set_xlabel("iteration")
        axes[2].set_ylabel("mean $g_j$ of the group")
        axes[2].set_ylim(0, 1.05)
        axes[2].set_title("$g_j$ by group during training")
        axes[2].grid(alpha=0.3)
        axes[2].legend(fontsize="small")
    figure.savefig(output, dpi=100)
    plt.close(figure)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="whose g_j to draw (focal loss trained as EFL with s = 0)")
    parser.add_argument("--gamma-of", type=Path, help="whose gamma_j to draw (default: the same checkpoint)")
    parser.add_argument("--dataset", required=True, help="the training set, for each class's image count")
    parser.add_argument("--output", type=Path, default=Path("efl_stats.png"))
    parser.add_argument("--gamma-b", type=float, help="gamma_b of --gamma-of (default: from its config.yaml)")
    parser.add_argument("--scale", type=float, help="s of --gamma-of (default: from its config.yaml)")
    parser.add_argument(
        "--trust-pickle", action="store_true", help="read a checkpoint that needs full unpickling (runs code from it)"
    )
    args = parser.parse_args(argv)
    gamma_of = args.gamma_of or args.checkpoint
    try:
        register_datasets(((run_config(args.checkpoint) or {}).get("DATASETS") or {}).get("REGISTER", ()))
        pos_neg = load_statistics(args.checkpoint, args.trust_pickle)
        if args.gamma_b is None or args.scale is None:
            gamma_b, scale = efl_hyperparameters(gamma_of)
        gamma_b = args.gamma_b if args.gamma_b is not None else gamma_b
        scale = args.scale if args.scale is not None else scale
        gamma = gamma_b + scale * (1.0 - load_statistics(gamma_of, args.trust_pickle))
        image_counts = training_image_counts(args.dataset)
        if len(image_counts) != len(pos_neg):
            raise ValueError(f"dataset '{args.dataset}' has {len(image_counts)} classes, the checkpoint {len(pos_neg)}")
    except (OSError, ValueError) as e:  # ConfigError included
        sys.exit(f"plot_efl_stats.py: error: {e}")
    curves = {
        path.parent.name: read_group_curves(path.parent / "metrics.json")
        for path in dict.fromkeys((args.checkpoint, gamma_of))
        if (path.parent / "metrics.json").is_file()
    }
    titles = (f"$g_j$ of {args.checkpoint.parent.name}", f"$\\gamma_j$ of {gamma_of.parent.name} (s = {scale:g})")
    plot(pos_neg, gamma, image_counts, curves, titles, args.output)
    summary = summarise(pos_neg, image_counts)
    print(
        f"{args.checkpoint}: mean g_j rare {summary['g_rare']:.3f}, common {summary['g_common']:.3f}, "
        f"frequent {summary['g_frequent']:.3f}; Spearman(g_j, training images) {summary['spearman']:.2f}"
    )
    print(f"wrote {args.output}")
    return summary


if __name__ == "__main__":
    main()
