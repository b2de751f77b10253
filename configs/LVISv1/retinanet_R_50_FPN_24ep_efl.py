# RetinaNet R-50-FPN with Equalized Focal Loss on LVIS v1, 24 epochs: the LazyConfig twin of
# retinanet_R_50_FPN_24ep_efl.yaml (tests/test_lazy_config.py checks that both build the same model, optimiser
# and schedule). detectron2's RetinaNet config (configs/common/models/retinanet.py) with EFLRetinaNet as the target.
from detectron2 import model_zoo

from efl import EFLRetinaNet

from ..common.lvis_v1_24ep import dataloader, lr_multiplier, optimizer, train

model = model_zoo.get_config("common/models/retinanet.py").model
model._target_ = EFLRetinaNet  # its cls_loss is the paper's EFL: gamma_b 2, s 8, alpha 0.25
model.num_classes = 1203
model.backbone.bottom_up.freeze_at = 2
model.smooth_l1_beta = 0.0
model.test_score_thresh = 0.0001
model.max_detections_per_image = 300

train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.output_dir = "output/lvis_v1/retinanet_R_50_FPN_24ep_efl_lazy"
