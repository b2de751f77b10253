#!/usr/bin/env python
"""
Forward + backward (+ statistics) of the classification loss on R anchors x C classes, ~1% positive anchors.

    python benchmarks/bench_loss.py                       # CPU, R = 20k
    python benchmarks/bench_loss.py --device cuda --rows 20000 90000 400000

Implementations:
- focal: sigmoid focal loss as detectron2's RetinaNet computes it (dense one-hot target of the valid rows);
- EFL term by term: the EFL formula written with a dense target, statistics from a gradient hook on the logits;
- EFL (ours): efl.EqualizedFocalLoss on this device's default path (Triton on CUDA, chunked PyTorch on the CPU);
- floor: one read of the logits plus one write of their gradient (a copy).

"extra peak" is the memory above what the inputs hold: on CUDA the allocator's peak; on the CPU the process's
peak resident size, each case measured in a fresh process.
"""
import argparse
import json

import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss_jit

from efl import EqualizedFocalLoss
from efl.losses.function import resolve_kernel
from measure import device_name, markdown_table, peak_rss_bytes, rss_bytes, run_child, time_ms

IMPLEMENTATIONS = ("focal", "EFL term by term", "EFL (ours)", "floor")


def make_inputs(rows, classes, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(rows, classes, device=device, generator=g) - 4.0
    labels = torch.full((rows,), classes, device=device)
    fg = torch.rand(rows, device=device, generator=g) < 0.01
    labels[fg] = torch.randint(0, classes, (int(fg.sum()),), device=device, generator=g)
    labels[torch.rand(rows, device=device, generator=g) < 0.02] = -1
    return logits.requires_grad_(), labels


def focal_step(logits, labels):
    classes = logits.shape[1]
    valid = labels >= 0
    target = F.one_hot(labels[valid], num_classes=classes + 1)[:, :-1]
    loss = sigmoid_focal_loss_jit(logits[valid], target.to(logits.dtype), alpha=0.25, gamma=2.0, reduction="sum")
    (loss / 100.0).backward()


def efl_term_by_term_step(logits, labels, pos_neg):
    classes = logits.shape[1]
    valid = labels >= 0
    target = F.one_hot(labels.clamp(min=0), num_classes=classes + 1)[:, :-1].float() * valid[:, None]
    stats = {}

    def hook(grad):
        magnitude = grad.abs() * valid[:, None]
        stats["pos"] = (magnitude * target).sum(0)
        stats["neg"] = (magnitude * (1 - target)).sum(0)

    logits.register_hook(hook)
    gamma = 2.0 + 8.0 * (1 - pos_neg)
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    alpha_t = 0.25 * target + 0.75 * (1 - target)
    loss = alpha_t * (gamma / 2.0) * (1 - p_t) ** gamma * ce
    (loss[valid].sum() / 100.0).backward()
    logits._backward_hooks.clear()


def make_step(name, logits, labels):
    classes = logits.shape[1]
    if name == "focal":
        return lambda: focal_step(logits, labels)
    if name == "EFL term by term":
        pos_neg = torch.rand(classes, device=logits.device)
        return lambda: efl_term_by_term_step(logits, labels, pos_neg)
    if name == "EFL (ours)":
        module = EqualizedFocalLoss(classes).to(logits.device).train()
        module.pos_neg.copy_(torch.rand(classes))
        return lambda: module(logits, labels, 100.0).backward()
    out = torch.empty_like(logits)
    return lambda: out.copy_(logits)


def measure(name, rows, classes, device, repeat):
    logits, labels = make_inputs(rows, classes, device)
    step = make_step(name, logits, labels)
    if device == "cuda":
        step()
        logits.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
    else:
        before = rss_bytes()
        step()
        extra = peak_rss_bytes() - before
    logits.grad = None
    ms = time_ms(step, device, repeat)
    result = {"ms": ms, "extra_gb": extra / 1e9, "logits_gb": logits.numel() * logits.element_size() / 1e9}
    if name == "EFL (ours)":
        kernel = resolve_kernel("auto", torch.device(device))
        failure = getattr(kernel, "failure", None)  # "auto" gave up its kernel (CheckedKernel)
        result["kernel"] = kernel.name if failure is None else f"torch, as {kernel.name} {failure}"
    return result


def loss_report(device, rows_list, classes, repeat, same_process=False):
    """
    The Markdown table of every implementation at every R, each measured in a fresh process (or, quicker, all in
    this one, where the peak memory of a case then includes the earlier cases').
    """
    table, kernels = [], set()
    for rows in rows_list:
        results = {}
        for name in IMPLEMENTATIONS:
            if same_process:
                results[name] = measure(name, rows, classes, device, repeat)
            else:
                argv = [__file__, "--device", device, "--classes", str(classes), "--repeat", str(repeat)]
                results[name] = run_child(argv + ["--child", name, str(rows)])
            kernels.add(results[name].get("kernel"))
        for name in IMPLEMENTATIONS:
            r = results[name]
            table.append(
                [
                    f"{rows:,}",
                    name,
                    f"{r['ms']:.2f}",
                    f"{r['extra_gb']:.2f}",
                    f"{r['extra_gb'] / r['logits_gb']:.2f}",
                    f"{r['ms'] / results['focal']['ms']:.2f}",
                    f"{r['ms'] / results['floor']['ms']:.1f}",
                ]
            )
    title = (
        f"classification loss fwd+bwd, C = {classes}, {device_name(device)}, torch {torch.__version__}, "
        f"median of {repeat}"
    )
    headers = ["R", "implementation", "ms", "extra peak GB", "x logits", "x focal", "x floor"]
    kernels.discard(None)
    return f"{title}; EFL (ours) ran on: {', '.join(sorted(kernels))}\n\n" + markdown_table(table, headers)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--rows", type=int, nargs="+", default=[20000])
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--repeat", type=int, default=None, help="timed runs (default: 5 on CPU, 20 on CUDA)")
    parser.add_argument("--same-process", action="store_true", help="measure every case in this process (quick)")
    parser.add_argument("--child", nargs=2, metavar=("IMPLEMENTATION", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    repeat = args.repeat or (5 if args.device == "cpu" else 20)
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.classes, args.device, repeat)))
        return
    print(loss_report(args.device, args.rows, args.classes, repeat, args.same_process))


if __name__ == "__main__":
    main()
