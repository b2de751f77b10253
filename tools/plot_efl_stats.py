#!/usr/bin/env python
"""
Plot what EFL learned about each class: the focusing factor gamma_j and the gradient ratio g_j stored in a
checkpoint, against the number of training images of the class (log scale), coloured by LVIS frequency group.

    python tools/plot_efl_stats.py output/demo/retinanet_R_18_FPN_demo_efl/model_final.pth \\
        --dataset efl_synth_lt_train --output efl_stats.png

gamma_b and s are read from the config.yaml that train_net.py writes beside the checkpoint (or --gamma-b/--scale),
and so are the datasets it registered (DATASETS.REGISTER). The checkpoint is read with weights_only=True
(--trust-pickle reads a file that needs full unpickling, which runs code from it).
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402


import efl  # noqa: E402, F401  (registers the synthetic datasets)
from efl.data import FREQUENCY_GROUPS, class_image_count, lvis_frequency_groups, register_datasets  # noqa: E402
from efl.safe_loading import load_torch_file  # noqa: E402

COLOURS = {"rare": "tab:red", "common": "tab:orange", "frequent": "tab:blue"}


def load_statistics(checkpoint: Path, trust_pickle: bool = False) -> torch.Tensor:
    """The (C,) g_j (``pos_neg``) buffer of the EFL loss in a detectron2 checkpoint."""
    state = load_torch_file(str(checkpoint), trust_pickle=trust_pickle)
    state = state.get("model", state)
    keys = [k for k in state if k.endswith("cls_loss.pos_neg")]
    if len(keys) != 1:
        raise ValueError(f"{checkpoint} holds no EFL statistics (no *cls_loss.pos_neg): is it an EFL model?")
    return state[keys[0]].float()


def run_config(checkpoint: Path) -> Optional[dict]:
    """The config.yaml that train_net.py wrote beside the checkpoint, as a dict; None when there is none."""
    config = checkpoint.parent / "config.yaml"
    if not config.is_file():
        return None
    with open(config) as f:
        return yaml.safe_load(f)


def efl_hyperparameters(checkpoint: Path) -> Tuple[float, float]:
    """gamma_b and s from the config.yaml beside the checkpoint."""
    config = run_config(checkpoint)
    if config is None:
        raise ValueError(f"no {checkpoint.parent / 'config.yaml'} to read gamma_b and s from: pass --gamma-b and --scale")
    efl_cfg = config["MODEL"]["EFL"]
    return float(efl_cfg["GAMMA_B"]), float(efl_cfg["SCALE"])


def plot(pos_neg: torch.Tensor, image_counts: Sequence[int], groups: Sequence[int], gamma_b: float, scale: float, title: str, output: Path) -> None:
    gamma = gamma_b + scale * (1.0 - pos_neg)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for axis, values, label in ((axes[0], gamma, "focusing factor $\\gamma_j$"), (axes[1], pos_neg, "$g_j$ (positive / negative gradient)")):
        for g, name in enumerate(FREQUENCY_GROUPS):
            members = [c for c in range(len(groups)) if groups[c] == g]
            axis.scatter(
                [image_counts[c] for c in members], values[members].tolist(), s=18, c=COLOURS[name], label=name
            )
        axis.set_xscale("log")
        axis.set_xlabel("training images of the class")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].axhline(gamma_b, color="grey", lw=0.8, ls="--")
    axes[0].legend()
    figure.suptitle(title)
    figure.savefig(output, dpi=100)
    plt.close(figure)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--dataset", required=True, help="the training set, for each class's image count")
    parser.add_argument("--output", type=Path, default=Path("efl_stats.png"))
    parser.add_argument("--gamma-b", type=float)
    parser.add_argument("--scale", type=float)
    parser.add_argument(
        "--trust-pickle", action="store_true", help="read a checkpoint that needs full unpickling (runs code from it)"
    )
    args = parser.parse_args(argv)
    try:
        config = run_config(args.checkpoint)
        register_datasets((config or {}).get("DATASETS", {}).get("REGISTER", ()))
        pos_neg = load_statistics(args.checkpoint, args.trust_pickle)
        if args.gamma_b is None or args.scale is None:
            gamma_b, scale = efl_hyperparameters(args.checkpoint)
        gamma_b = args.gamma_b if args.gamma_b is not None else gamma_b
        scale = args.scale if args.scale is not None else scale
        counts = class_image_count(args.dataset)
        if counts is None:
            raise ValueError(f"dataset '{args.dataset}' has no class_image_count metadata (an LVIS-type training set)")
        groups = lvis_frequency_groups(args.dataset, len(pos_neg))
    except ValueError as e:  # ConfigError included
        sys.exit(f"plot_efl_stats.py: error: {e}")
    image_counts = [c["image_count"] for c in sorted(counts, key=lambda c: c["id"])]
    plot(pos_neg, image_counts, groups, gamma_b, scale, f"EFL statistics of {args.checkpoint}", args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
