#!/usr/bin/env python
"""
Convert an EFL authors' released checkpoint (efl_improved_baseline_r50.pth / _r101.pth) into a detectron2
checkpoint for configs/LVISv1/released_improved_R_{50,101}.yaml:

    python tools/convert_released_checkpoint.py efl_improved_baseline_r50.pth released_r50.pth
    python train_net.py --config-file configs/LVISv1/released_improved_R_50.yaml --eval-only MODEL.WEIGHTS released_r50.pth

--layout: "auto" (default) tells anchor-first from class-first classification channels by the bias (and prints
the decision); force it with "anchor-first" or "class-first". The mapping is in released_checkpoint.py beside this
script; any
key that cannot be placed stops the conversion with its name.

The file is read with torch.load(weights_only=True): a file holding objects other than tensors and plain
containers is refused with their names, since unpickling them would run code from the file. --trust-pickle reads
it anyway: only for a file whose origin you trust.
"""
import argparse
import sys

import torch

from efl.engine.safe_loading import load_torch_file
from efl.errors import ConfigError
from released_checkpoint import LAYOUTS, ConversionError, convert_state_dict, detect_layout, unwrap


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="the released .pth file")
    parser.add_argument("output", help="where to write the detectron2 checkpoint")
    parser.add_argument("--layout", choices=LAYOUTS, default="auto")
    parser.add_argument(
        "--trust-pickle", action="store_true", help="read a file that needs full unpickling (runs code from it)"
    )
    args = parser.parse_args(argv)

    try:
        checkpoint = load_torch_file(args.input, trust_pickle=args.trust_pickle)
        state = unwrap(checkpoint)
        if args.layout == "auto":
            bias = state.get("roi_head.cls_subnet_pred.bias")
            if bias is not None:
                layout, anchor_first, class_first = detect_layout(bias)
                print(
                    f"classification channels: {layout} (bias correlation between the two anchors' rows: "
                    f"anchor-first view {anchor_first:.3f}, class-first view {class_first:.3f})"
                )
        converted, layout = convert_state_dict(state, args.layout)
    except (ConversionError, ConfigError) as e:
        sys.exit(f"convert_released_checkpoint.py: error: {e}")
    torch.save({"model": converted, "__author__": "EFL authors (converted)", "matching_heuristics": False}, args.output)
    print(f"wrote {len(converted)} tensors ({layout}) to {args.output}")


if __name__ == "__main__":
    main()
