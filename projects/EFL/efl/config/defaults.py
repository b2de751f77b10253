"""
The yacs config keys of the EFL project, added to detectron2's by :func:`add_efl_config`, as TridentNet's
``add_tridentnet_config`` adds its own. Each key's comment says what it does; the defaults are the paper's.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_efl_config"]


def add_efl_config(cfg: CN) -> None:
    """
    Add the ``MODEL.EFL`` node (the hyper-parameters of Equalized Focal Loss, used by every EFL detector; the
    defaults are the paper's), ``MODEL.IMPROVED_BASELINE``, the few keys the improved baseline adds elsewhere, and
    the epoch-based schedule (``SOLVER.MAX_EPOCHS`` ..., ``DATALOADER.REPEAT_ROUNDING``).
    """
    cfg.MODEL.EFL = CN()
    # gamma_b: the focusing factor every class starts from (EFL with pos_neg = 1 is focal loss with it)
    cfg.MODEL.EFL.GAMMA_B = 2.0
    # s: how far a class's focusing factor rises as its positive/negative gradient ratio falls
    cfg.MODEL.EFL.SCALE = 8.0
    # alpha: the weight of positive cells (1 - alpha for negative ones), as in focal loss
    cfg.MODEL.EFL.ALPHA = 0.25
    # the classification loss of every EFL detector: "efl", "eqfl" (Equalized Quality Focal Loss, ImprovedRetinaNet
    # only: its positive targets are the predicted boxes' IoUs) or "focal" (EFL with s = 0, which is exactly sigmoid
    # focal loss with RETINANET.FOCAL_LOSS_*, keeping the statistics for comparison)
    cfg.MODEL.EFL.LOSS = "efl"
    # which code computes it: "auto" (Triton on CUDA, chunked PyTorch elsewhere), "triton" or "torch";
    # $EFL_IMPLEMENTATION overrides it
    cfg.MODEL.EFL.IMPLEMENTATION = "auto"
    # the paper's ablations: False uses gamma_b as every class's focusing factor / 1 as every class's weight
    cfg.MODEL.EFL.FOCUSING_FACTOR = True
    cfg.MODEL.EFL.WEIGHTING_FACTOR = True
    # start the statistics afresh after loading MODEL.WEIGHTS (not on --resume): for fine-tuning weights that were
    # trained on another dataset, whose per-class statistics mean nothing for this one
    cfg.MODEL.EFL.RESET_STATISTICS = False

    # The paper's improved one-stage baseline (META_ARCHITECTURE "ImprovedRetinaNet"); each piece can be switched
    # off for ablations.
    cfg.MODEL.IMPROVED_BASELINE = CN()
    # ATSS candidates per level and box; 0 uses RetinaNet's IoU matching (RETINANET.IOU_THRESHOLDS)
    cfg.MODEL.IMPROVED_BASELINE.ATSS_TOPK = 18
    # predict each anchor's IoU (BCE loss) and multiply its sigmoid into the test scores
    cfg.MODEL.IMPROVED_BASELINE.IOU_BRANCH = True
    # weight the GIoU box loss by the IoU targets and normalise by their sum (else / number of positives)
    cfg.MODEL.IMPROVED_BASELINE.IOU_WEIGHTED_BOX_LOSS = True
    # False: the head towers' convs that a norm follows have no bias (the norm's shift makes it redundant; the
    # official code and its released models have none)
    cfg.MODEL.IMPROVED_BASELINE.TOWER_CONV_BIAS = True

    # pad input images to a multiple of this (0: the FPN's coarsest stride, detectron2's default); read by
    # build_retinanet_resnet_fpn_lateral_p6p7_backbone (the released EFL models pad to 64)
    cfg.MODEL.FPN.SIZE_DIVISIBILITY = 0
    # library of the test-time resize: "pil" (detectron2's) or "opencv" (cv2.INTER_LINEAR, the released EFL models')
    cfg.INPUT.TEST_RESIZE_BACKEND = "pil"

    # Epoch-based schedules (efl/engine/schedule.py). An epoch is one pass over the training list as the sampler
    # enlarges it; the engine resolves these into iterations (as MAX_ITER, STEPS, WARMUP_ITERS) when training starts.
    # the number of epochs; 0 keeps SOLVER.MAX_ITER, STEPS and WARMUP_ITERS as given
    cfg.SOLVER.MAX_EPOCHS = 0
    # the LR steps, in epochs (fractions allowed), with MAX_EPOCHS
    cfg.SOLVER.EPOCH_STEPS = ()
    # the warm-up, in epochs (a float), with MAX_EPOCHS
    cfg.SOLVER.WARMUP_EPOCHS = 0.0
    # how RepeatFactorTrainingSampler makes whole repeats of each image's factor r: "stochastic" (detectron2's:
    # floor(r), plus one with probability r - floor(r), each epoch) or "ceil" (the official EFL code's: ceil(r))
    cfg.DATALOADER.REPEAT_ROUNDING = "stochastic"
    # Load MODEL.WEIGHTS (or a checkpoint to resume) even when it does not fit the model: keys the model lacks are
    # ignored, and parameters the weights lack or hold in another shape keep their initial values. For fine-tuning
    # from a detector trained on other classes. Without it, only weights that fill the model exactly load (the EFL
    # statistics excepted), except ImageNet backbone files (detectron2's .pkl, matched by name heuristics).
    cfg.MODEL.ALLOW_PARTIAL_WEIGHTS = False
    # Datasets to register under any name, each (name, format, json_file, image_root) with format "lvis" or "coco":
    # e.g. (("mine_train", "lvis", "/data/mine/train.json", "/data/mine/images"), ...). See docs/datasets.md.
    cfg.DATASETS.REGISTER = ()

    cfg.register_renamed_key("MODEL.IMPROVED_BASELINE.CLS_LOSS", "MODEL.EFL.LOSS")
