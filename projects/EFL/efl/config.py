"""Config keys of the EFL project."""
from detectron2.config import CfgNode as CN


def add_efl_config(cfg: CN) -> None:
    """
    Add the ``MODEL.EFL`` node: the hyper-parameters of Equalized Focal Loss, used by EFLRetinaNet.
    The defaults are the paper's.
    """
    cfg.MODEL.EFL = CN()
    # gamma_b: the focusing factor every class starts from (EFL with pos_neg = 1 is focal loss with it)
    cfg.MODEL.EFL.GAMMA_B = 2.0
    # s: how far a class's focusing factor rises as its positive/negative gradient ratio falls
    cfg.MODEL.EFL.SCALE = 8.0
    # alpha: the weight of positive cells (1 - alpha for negative ones), as in focal loss
    cfg.MODEL.EFL.ALPHA = 0.25
    # which code computes it: "auto" (Triton on CUDA, chunked PyTorch elsewhere), "triton", "torch", or
    # "reference" (term by term, for debugging); $EFL_IMPLEMENTATION overrides it
    cfg.MODEL.EFL.IMPLEMENTATION = "auto"
