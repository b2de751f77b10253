#!/usr/bin/env python
"""
One training iteration (forward + backward) of RetinaNet R-50-FPN with 1203 classes, 2 images, random weights
and images, 9 anchors per location: detectron2's RetinaNet (focal loss), EFLRetinaNet, and RetinaNet with the
classification loss removed (what everything else costs).

    python benchmarks/bench_train_step.py                         # CPU, 256 x 256
    python benchmarks/bench_train_step.py --device cuda --size 1024

Each model runs in a fresh process; "peak" is the allocator's peak on CUDA and the process's peak resident
size on the CPU.
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from tabulate import tabulate

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from efl import add_efl_config

MODELS = {
    "RetinaNet (focal loss)": "RetinaNet",
    "EFLRetinaNet": "EFLRetinaNet",
    "RetinaNet, no classification loss": "NoClsRetinaNet",
}


class NoClsRetinaNet(RetinaNet):
    """RetinaNet without its classification term: the cost of everything else in the step."""

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        gt_labels = torch.stack(gt_labels)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        loss_box_reg = _dense_box_regression_loss(
            anchors, self.box2box_transform, pred_anchor_deltas, gt_boxes, pos_mask,
            box_reg_loss_type=self.box_reg_loss_type, smooth_l1_beta=self.smooth_l1_beta,
        )  # fmt: skip
        # a zero gradient still reaches the classification branch, as it would from any loss
        return {"loss_box_reg": loss_box_reg + sum(x.sum() for x in pred_logits) * 0.0}


def build(meta_architecture, device):
    cfg = get_cfg()
    add_efl_config(cfg)
    cfg.merge_from_file("configs/Base-EFL-RetinaNet.yaml")
    cfg.merge_from_list(
        ["MODEL.RETINANET.NUM_CLASSES", 1203, "MODEL.RESNETS.DEPTH", 50, "MODEL.DEVICE", device]
    )
    if meta_architecture == "NoClsRetinaNet":
        cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
        return NoClsRetinaNet(cfg).to(device)
    cfg.MODEL.META_ARCHITECTURE = meta_architecture
    return build_model(cfg)


def make_inputs(size, device, num_images=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(num_images):
        xy = torch.rand(8, 2, generator=g) * size * 0.7
        wh = torch.rand(8, 2, generator=g) * size * 0.3 + 16
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        instances.gt_classes = torch.randint(0, 1203, (8,), generator=g)
        image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8).float()
        inputs.append({"image": image.to(device), "instances": instances.to(device)})
    return inputs


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(name, device, size, repeat):
    torch.manual_seed(0)
    model = build(MODELS[name], device).train()
    inputs = make_inputs(size, device)

    def step():
        model.zero_grad(set_to_none=True)
        sum(model(inputs).values()).backward()

    with EventStorage():
        step()
        sync(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeat):
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times.append((time.perf_counter() - start) * 1e3)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"ms": statistics.median(times), "peak_gb": peak / 1e9}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--size", type=int, default=None, help="image side (default: 256 on CPU, 1024 on CUDA)")
    parser.add_argument("--repeat", type=int, default=None, help="timed iterations (default: 3 on CPU, 10 on CUDA)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.size or (256 if args.device == "cpu" else 1024)
    repeat = args.repeat or (3 if args.device == "cpu" else 10)
    if args.child:
        print(json.dumps(measure(args.child, args.device, size, repeat)))
        return

    rows = []
    for name in MODELS:
        child = subprocess.run(
            [sys.executable, __file__, "--device", args.device, "--size", str(size), "--repeat", str(repeat),
             "--child", name],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        r = json.loads(child.stdout.strip().splitlines()[-1])
        rows.append([name, f"{r['ms']:.1f}", f"{r['peak_gb']:.2f}"])
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"one training iteration, R-50-FPN, 1203 classes, 2 images of {size} x {size}, {device}, "
        f"torch {torch.__version__}, median of {repeat}"
    )
    print(tabulate(rows, headers=["model", "ms", "peak GB"], tablefmt="github"))


if __name__ == "__main__":
    main()
