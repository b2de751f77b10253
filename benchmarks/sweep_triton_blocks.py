#!/usr/bin/env python
"""
Every tile shape of EFL's Triton kernel (efl.losses.triton_kernel.CONFIGS), timed on LVIS-sized problems, and
the shape triton.autotune picked for each launch. C = 1203, ~1% positive anchors, float32.

Problems:
- levels: a dense head's per-level (N, A*C, H, W) logits, as EFLRetinaNet and ImprovedRetinaNet train: 2 images
  of 1024 x 1024, levels P3-P7; A = 2 (the improved baseline, R = 87,296) and A = 9 (RetinaNet, R = 392,832);
- rows: a plain (R, C) matrix (EqualizedFocalLoss.forward), R = 90,000 and 400,000.

    python benchmarks/sweep_triton_blocks.py                 # on a GPU
    TRITON_INTERPRET=1 python benchmarks/sweep_triton_blocks.py --device cpu --size 16 --anchors 1 --rows 16 \\
        --classes 3 --configs 2 --repeat 1                   # the script itself, on the CPU (no meaningful times)
"""
import argparse

import torch

from efl.losses.targets import DenseTargets
from efl.losses.triton_kernel import CONFIGS, _efl_kernel, efl_grad_triton, efl_loss_triton
from measure import device_name, markdown_table, time_ms

STRIDES = (8, 16, 32, 64, 128)  # P3-P7


def make_targets(num_images, num_rows, num_classes, num_anchors, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.full((num_images, num_rows), num_classes)
    fg = torch.rand(num_images, num_rows, generator=g) < 0.01
    labels[fg] = torch.randint(0, num_classes, (int(fg.sum()),), generator=g)
    labels[torch.rand(num_images, num_rows, generator=g) < 0.02] = -1
    gamma = 2.0 + 8.0 * torch.rand(num_classes, generator=g)
    w_pos, w_neg = 0.25 * gamma / 2.0 / 100.0, 0.75 * gamma / 2.0 / 100.0
    return DenseTargets(labels.to(device), None, gamma.to(device), w_pos.to(device), w_neg.to(device), num_anchors)


def level_problem(size, num_anchors, num_classes, device):
    """2 images of size x size: per-level (2, A*C, H, W) logits and their targets."""
    g = torch.Generator(device=device).manual_seed(1)
    shapes = [(-(-size // s), -(-size // s)) for s in STRIDES]
    levels = [
        torch.randn(2, num_anchors * num_classes, h, w, device=device, generator=g) - 4.0 for h, w in shapes
    ]
    num_rows = sum(h * w for h, w in shapes) * num_anchors
    return levels, make_targets(2, num_rows, num_classes, num_anchors, device)


def row_problem(rows, num_classes, device):
    """(R, C) logits as EqualizedFocalLoss.forward reads them: the one-level view (1, C, R, 1)."""
    g = torch.Generator(device=device).manual_seed(2)
    logits = torch.randn(rows, num_classes, device=device, generator=g) - 4.0
    return [logits.t()[None, :, :, None]], make_targets(1, rows, num_classes, 1, device)


def describe(config) -> str:
    k = config.kwargs
    return f"BLOCK_C {k['BLOCK_C']}, BLOCK_P {k['BLOCK_P']}, ITERS {k['ITERS']}, {config.num_warps} warps"


def sweep_problem(levels, targets, device, repeat, configs):
    grad_output = torch.tensor(1.0, device=device)
    rows = []
    for config in configs:
        forward = time_ms(lambda: efl_loss_triton(levels, targets, config), device, repeat)
        backward = time_ms(lambda: efl_grad_triton(levels, targets, grad_output, config), device, repeat)
        rows.append([describe(config), f"{forward:.3f}", f"{backward:.3f}", f"{forward + backward:.3f}"])
    # what autotuning picks for these launches (one pick per level and pass)
    _efl_kernel.cache.clear()
    efl_loss_triton(levels, targets)
    efl_grad_triton(levels, targets, grad_output)
    chosen = _efl_kernel.cache.values() or [_efl_kernel.best_config]  # no cache: a single configuration
    return rows, sorted({describe(c) for c in chosen})


def sweep_report(device, size, anchors, rows_list, num_classes, repeat, num_configs):
    """Yields the report's title, then one section per problem as soon as it is measured."""
    configs = CONFIGS[:num_configs]
    yield (
        f"Triton tile shapes: forward (loss) and backward (gradient + statistics) ms, C = {num_classes}, "
        f"{device_name(device)}, torch {torch.__version__}, median of {repeat}"
    )
    problems = [(f"levels, A = {a}, 2 images of {size} x {size}", level_problem, (size, a)) for a in anchors]
    problems += [(f"rows, R = {r:,}", row_problem, (r,)) for r in rows_list]
    for name, make, args in problems:
        levels, targets = make(*args, num_classes, device)
        rows, picks = sweep_problem(levels, targets, device, repeat, configs)
        yield (
            f"{name} (R = {targets.labels.numel():,}); autotune picked: {'; '.join(picks)}\n\n"
            + markdown_table(rows, ["configuration", "forward ms", "backward ms", "total ms"])
        )
        del levels, targets


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--size", type=int, default=1024, help="image side of the levels problems")
    parser.add_argument("--anchors", type=int, nargs="+", default=[2, 9], help="A of the levels problems")
    parser.add_argument("--rows", type=int, nargs="+", default=[90000, 400000], help="R of the rows problems")
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--configs", type=int, default=len(CONFIGS), help="sweep only the first N configurations")
    args = parser.parse_args()
    sections = sweep_report(args.device, args.size, args.anchors, args.rows, args.classes, args.repeat, args.configs)
    for i, section in enumerate(sections):
        print(("\n" if i else "") + section, flush=True)


if __name__ == "__main__":
    main()
