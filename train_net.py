#!/usr/bin/env python
"""
Train and evaluate EFL (and focal-loss baseline) detectors with detectron2.

    python train_net.py --config-file configs/LVISv1/retinanet_R_50_FPN_24ep_efl.yaml --num-gpus 8
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS model_final.pth
    python train_net.py --config-file ... --resume
    python train_net.py --config-file configs/LVISv1/fcos_R_50_FPN_24ep_efl.py --num-gpus 8 train.max_iter=1000

A .yaml file is a yacs config (overrides KEY VALUE), a .py file a LazyConfig (overrides key=value); both are
trained by the same engine (efl.engine). The config is loaded and checked once, in this process, before any worker
process starts; this process (on machine 0) holds the output directory's lock until the run ends. SIGTERM, SIGUSR1
or SIGINT stop the run after a checkpoint of the current iteration, with exit status 75 (resume with --resume).
"""
import sys

from detectron2.engine import default_argument_parser

from efl.config import check, load
from efl.engine import EXIT_PREEMPTED, Preempted, launch_run
from efl.errors import ConfigError


def argument_parser():
    parser = default_argument_parser()
    # detectron2's default is one port per user, so two runs on one machine (each locks only its output directory)
    # would meet on it; "auto" takes a free port. Runs on several machines give theirs.
    parser.set_defaults(dist_url="auto")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load MODEL.WEIGHTS (train.init_checkpoint) even when it holds objects other than weights, whose "
        "unpickling runs code from the file: only for files whose origin you trust",
    )
    return parser


def main(args) -> None:
    num_processes = args.num_gpus * args.num_machines
    recipe = load(args.config_file, args.opts, eval_only=args.eval_only, num_processes=num_processes)
    check(recipe, eval_only=args.eval_only, resume=args.resume, num_processes=num_processes)
    launch_run(args, recipe)


if __name__ == "__main__":
    try:
        main(argument_parser().parse_args())
    except ConfigError as e:  # also one found inside a worker process, e.g. an unreadable checkpoint
        sys.exit(f"train_net.py: error: {e}")
    except Preempted as stop:  # SIGTERM, SIGUSR1 or SIGINT: the state of the last iteration is saved
        print(f"train_net.py: {stop}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
