#!/usr/bin/env python
"""
One training iteration (forward + backward) at LVIS scale: R-50-FPN, 1203 classes, 2 images, random weights and
images. Models: detectron2's RetinaNet (focal loss, 9 anchors per location), EFLRetinaNet (same, with EFL), the
paper's improved baseline with EFL (ImprovedRetinaNet: 2 anchors per location, GroupNorm head, ATSS, GIoU, IoU
branch), and RetinaNet with the classification loss removed (what everything else costs).

    python benchmarks/bench_train_step.py                         # CPU, 256 x 256
    python benchmarks/bench_train_step.py --device cuda --size 1024

Each model runs in a fresh process; "peak" is the allocator's peak on CUDA and the process's peak resident
size on the CPU. "syncs" counts, for one step after the timed ones, the calls that made the host wait for the
GPU (CUDA), or on the CPU the host reads of tensor values that would (see host_syncs.py), by the package whose
code asked: ours (efl), detectron2's (with the backward ops, which here are those of its boolean-mask indexing),
and any other. The timed steps are not logging iterations (1 in 20 is, see EFLDetectorMixin.LOG_PERIOD).
"""
import argparse
import json

import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from efl import add_efl_config
from host_syncs import BACKWARD, HostSyncs
from measure import device_name, markdown_table, peak_rss_bytes, run_child, sync, time_ms

# name -> (base config, meta-architecture)
MODELS = {
    "RetinaNet (focal loss)": ("configs/Base-EFL-RetinaNet.yaml", "RetinaNet"),
    "EFLRetinaNet": ("configs/Base-EFL-RetinaNet.yaml", "EFLRetinaNet"),
    "improved baseline (ImprovedRetinaNet, EFL)": ("configs/Base-Improved-Baseline.yaml", "ImprovedRetinaNet"),
    "RetinaNet, no classification loss": ("configs/Base-EFL-RetinaNet.yaml", "NoClsRetinaNet"),
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


def build(name, device, opts=()):
    """The model ``name`` of MODELS: R-50-FPN, 1203 classes, then the config overrides ``opts``."""
    config, meta_architecture = MODELS[name]
    cfg = get_cfg()
    add_efl_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(["MODEL.RETINANET.NUM_CLASSES", 1203, "MODEL.RESNETS.DEPTH", 50, "MODEL.DEVICE", device])
    cfg.merge_from_list(list(opts))
    if meta_architecture == "NoClsRetinaNet":
        cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
        return NoClsRetinaNet(cfg).to(device), cfg
    cfg.MODEL.META_ARCHITECTURE = meta_architecture
    return build_model(cfg), cfg


def make_inputs(size, device, num_classes=1203, num_images=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(num_images):
        xy = torch.rand(8, 2, generator=g) * size * 0.7
        wh = torch.rand(8, 2, generator=g) * size * 0.3 + 16
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        instances.gt_classes = torch.randint(0, num_classes, (8,), generator=g)
        image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8).float()
        inputs.append({"image": image.to(device), "instances": instances.to(device)})
    return inputs


def measure(name, device, size, repeat, opts=()):
    torch.manual_seed(0)
    model, cfg = build(name, device, opts)
    model.train()
    num_classes = cfg.MODEL.RETINANET.NUM_CLASSES
    inputs = make_inputs(size, device, num_classes)
    iteration = 0

    def step():
        nonlocal iteration
        iteration += 1  # as in training: EFL logs every 20th iteration, from the first
        storage.iter = iteration
        model.zero_grad(set_to_none=True)
        sum(model(inputs).values()).backward()

    with EventStorage(start_iter=0) as storage:
        step()
        sync(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ms = time_ms(step, device, repeat, warmup=0)
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else peak_rss_bytes()
        with HostSyncs(device) as syncs:
            step()
    origins = syncs.by_origin()
    theirs = origins["detectron2"] + origins[BACKWARD]
    return {
        "ms": ms,
        "peak_gb": peak / 1e9,
        "syncs_efl": origins["efl"],
        "syncs_detectron2": theirs,
        "syncs_other": sum(origins.values()) - origins["efl"] - theirs,
        "sync_sites": [f"{s.path}:{s.function}" for s in syncs.sites],
        "sync_kind": syncs.kind,
        "model": f"R-{cfg.MODEL.RESNETS.DEPTH}-FPN, {num_classes} classes",
    }


def train_step_report(device, size, repeat, opts=(), models=tuple(MODELS), same_process=False):
    """
    The Markdown table of every model, each measured in a fresh process (or, quicker, all in this one, where the
    peak memory of a model then includes the earlier models').
    """
    rows = []
    for name in models:
        if same_process:
            r = measure(name, device, size, repeat, opts)
        else:
            argv = [__file__, "--device", device, "--size", str(size), "--repeat", str(repeat), "--child", name]
            r = run_child(argv + ["--opts", *map(str, opts)] if opts else argv)
        syncs = [str(r[k]) for k in ("syncs_efl", "syncs_detectron2", "syncs_other")]
        rows.append([name, f"{r['ms']:.1f}", f"{r['peak_gb']:.2f}", *syncs])
    title = (
        f"one training iteration, {r['model']}, 2 images of {size} x {size}, {device_name(device)}, "
        f"torch {torch.__version__}, median of {repeat}; syncs: {r['sync_kind']} in one step"
    )
    headers = ["model", "ms", "peak GB", "syncs: ours", "syncs: detectron2's (and backward)", "syncs: other"]
    return title + "\n\n" + markdown_table(rows, headers)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--size", type=int, default=None, help="image side (default: 256 on CPU, 1024 on CUDA)")
    parser.add_argument("--repeat", type=int, default=None, help="timed iterations (default: 3 on CPU, 10 on CUDA)")
    parser.add_argument("--same-process", action="store_true", help="measure every model in this process (quick)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides (KEY VALUE ...), e.g. a smaller model")
    args = parser.parse_args()
    size = args.size or (256 if args.device == "cpu" else 1024)
    repeat = args.repeat or (3 if args.device == "cpu" else 10)
    if args.child:
        print(json.dumps(measure(args.child, args.device, size, repeat, args.opts)))
        return
    print(train_step_report(args.device, size, repeat, args.opts, args.models, args.same_process))


if __name__ == "__main__":
    main()
