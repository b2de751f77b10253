"""
Deploying a trained dense detector (EFLRetinaNet, ImprovedRetinaNet, EFLFCOS): its network exported to
TorchScript or ONNX with dynamic height and width, and the detector's own post-processing run on the exported
network's outputs, the same code for PyTorch eager, TorchScript and ONNX Runtime (docs/deploy.md).
"""
from .files import FORMATS, ONNX_OPSET, OnnxRuntimeNetwork, export_network, load_network
from .network import DetectorNetwork, NetworkSignature, head_outputs
from .postprocess import Network, SplitDetector, postprocess_outputs

__all__ = [
    "DetectorNetwork",
    "FORMATS",
    "Network",
    "NetworkSignature",
    "ONNX_OPSET",
    "OnnxRuntimeNetwork",
    "SplitDetector",
    "export_network",
    "head_outputs",
    "load_network",
    "postprocess_outputs",
]
