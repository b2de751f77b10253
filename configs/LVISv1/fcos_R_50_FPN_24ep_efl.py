# FCOS R-50-FPN with Equalized Focal Loss on LVIS v1, 24 epochs (LazyConfig only: detectron2 has no yacs config
# for FCOS). detectron2's FCOS config (configs/common/models/fcos.py, as in its COCO-Detection/fcos_R_50_FPN_1x.py)
# with EFLFCOS as the target, and the data, optimiser and schedule of the RetinaNet LVIS configs.
from detectron2 import model_zoo

from efl import EFLFCOS

from ..common.lvis_v1_24ep import dataloader, lr_multiplier, optimizer, train

model = model_zoo.get_config("common/models/fcos.py").model
model._target_ = EFLFCOS  # its cls_loss is the paper's EFL: gamma_b 2, s 8, alpha 0.25
model.num_classes = 1203
model.backbone.bottom_up.freeze_at = 2
model.test_score_thresh = 0.0001  # FCOS's 0.2 on sqrt(cls x centerness) would cut LVIS's low-score detections
model.max_detections_per_image = 300

train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.output_dir = "output/lvis_v1/fcos_R_50_FPN_24ep_efl"
