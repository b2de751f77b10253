#!/usr/bin/env python
"""
Inference latency of the exported detectors (docs/deploy.md): PyTorch eager vs TorchScript vs ONNX Runtime, batch 1,
for the demo RetinaNet (R-18-FPN, 18 classes) at 128 px and the LVIS RetinaNet (R-50-FPN, 1203 classes) at 800 px
(shorter side, 4:3 images), with untrained weights. Each runtime's network (the exported graph, or the PyTorch
module it was exported from) is timed alone; the post-processing, the same code whichever runtime computed the
outputs (efl.export.postprocess_outputs), is timed once per model on PyTorch's outputs. Medians of --repeat runs
after --warmup runs, as a Markdown table that names the machine.

    python benchmarks/bench_export.py                  # CPU
    python benchmarks/bench_export.py --device cuda    # GPU: ONNX Runtime with its CUDA provider, when installed

The post-processing of an untrained model is its slowest: every score is near the classification prior, above the
test threshold, so each level keeps its top-k candidates for NMS. ONNX Runtime runs with as many threads as torch.
"""
import argparse
import os
import platform
import tempfile
from typing import Dict, Optional

import onnxruntime
import torch

import efl.config
from efl.export import DetectorNetwork, NetworkSignature, export_network, load_network, postprocess_outputs
from measure import markdown_table, time_ms

# label -> (config, overrides, shorter side of the input)
MODELS = {
    "demo RetinaNet (R-18, 18 classes)": ("configs/Synthetic/retinanet_R_18_FPN_demo_efl.yaml", [], 128),
    "LVIS RetinaNet (R-50, 1203 classes)": (
        "configs/LVISv1/retinanet_R_50_FPN_24ep_efl.yaml", ["MODEL.WEIGHTS", ""], 800
    ),
}
RUNTIMES = ("PyTorch eager", "TorchScript", "ONNX Runtime")


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return names[0] if names else platform.processor()


def machine(device: str) -> str:
    """The machine, in one line: what the measurements ran on."""
    versions = f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}); {versions}"
    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; {versions}"


def networks(detector, image: torch.Tensor, device: str, folder: str) -> Dict[str, Optional[object]]:
    """Runtime -> the detector's network as it runs there; None where it cannot (ONNX Runtime without CUDA)."""
    network = DetectorNetwork(detector).eval()
    signature = NetworkSignature.of(detector)
    runs = {"PyTorch eager": network}
    for runtime, fmt in (("TorchScript", "torchscript"), ("ONNX Runtime", "onnx")):
        runs[runtime] = load_network(export_network(network, signature, image, fmt, folder), detector, device)
    if device == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        runs["ONNX Runtime"] = None  # it would run on the CPU
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="runs before timing (TorchScript optimises on its 2nd)")
    args = parser.parse_args()
    device = args.device
    rows = []
    for label, (config, overrides, size) in MODELS.items():
        device_override = ["MODEL.DEVICE", device]
        detector = efl.config.load(config, [*overrides, *device_override]).build_model(None).eval()
        image = torch.rand(3, size, round(size * 4 / 3), generator=torch.Generator().manual_seed(0)) * 255
        shape = f"{size} x {image.shape[2]}"
        with tempfile.TemporaryDirectory() as folder, torch.no_grad():
            runs = networks(detector, image.to(device), device, folder)
            for runtime, network in runs.items():
                if network is None:
                    rows.append([label, shape, runtime, "not measured: no CUDA provider"])
                    continue
                network_ms = time_ms(lambda: network(image), device, args.repeat, args.warmup)
                rows.append([label, shape, runtime, f"{network_ms:.1f}"])
            outputs = runs["PyTorch eager"](image.to(device))
            hw = tuple(image.shape[-2:])
            postprocess_ms = time_ms(lambda: postprocess_outputs(detector, outputs, hw, hw), device, args.repeat, args.warmup)
            rows.append([label, shape, "post-processing (shared by all three)", f"{postprocess_ms:.1f}"])
    headers = ["model", "input (H x W)", "runtime", "median ms"]
    print(f"{device.upper()}: {machine(device)}. Batch 1, median of {args.repeat} runs after {args.warmup}.\n")
    print(markdown_table(rows, headers))


if __name__ == "__main__":
    main()
