"""
Exported networks as files: :func:`export_network` traces a :class:`DetectorNetwork` into TorchScript or ONNX with
dynamic height and width and stores its :class:`NetworkSignature` in the file (TorchScript: an extra file; ONNX:
metadata_props); :func:`load_network` reads either back as a callable with the same inputs and outputs, checked
against the detector that will post-process it. Every problem with a file is a one-line ConfigError.
"""
import contextlib
import io
import os
import warnings
from typing import Iterator, Tuple

import onnx
import onnxruntime
import torch
from torch import Tensor

from detectron2.export import dump_torchscript_IR

from ..errors import ConfigError, SettingNames
from .network import DetectorNetwork, NetworkSignature
from .postprocess import Network

__all__ = ["FORMATS", "OnnxRuntimeNetwork", "export_network", "load_network"]

# format -> the exported file's name in the output folder
FORMATS = {"torchscript": "model.ts", "onnx": "model.onnx"}
# Where the signature is stored: the TorchScript extra file / the ONNX metadata key.
_SIGNATURE = "efl_signature.json"
# The opset of the ONNX file; ONNX Runtime 1.17 and later run it.
ONNX_OPSET = 17


@contextlib.contextmanager
def _quiet_torchscript() -> Iterator[None]:
    # TorchScript and its ONNX exporter warn that they are deprecated (for torch.export, whose ONNX export of these
    # detectors specialises the input size: docs/deploy.md); the one TracerWarning, on ImageList.from_tensors'
    # assert that a batch's images have the same channels, concerns a single image's batch.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def export_network(network: DetectorNetwork, signature: NetworkSignature, sample: Tensor, fmt: str, folder: str) -> str:
    """
    Trace ``network`` on ``sample`` ((3, h, w): any size; height and width stay dynamic) and write it to ``folder``
    in ``fmt`` ("torchscript", with detectron2's IR dumps beside it, or "onnx"). Returns the file's path.
    """
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, FORMATS[fmt])
    network.eval()
    with torch.no_grad(), _quiet_torchscript():
        if fmt == "torchscript":
            # check_trace would trace again and compare on ``sample`` itself: tools/export.py checks another size
            traced = torch.jit.trace(network, (sample,), check_trace=False)
            torch.jit.save(traced, path, _extra_files={_SIGNATURE: signature.to_json()})
            dump_torchscript_IR(traced, folder)
        else:
            _export_onnx(network, signature, sample, path)
    return path


def _export_onnx(network: DetectorNetwork, signature: NetworkSignature, sample: Tensor, path: str) -> None:
    buffer = io.BytesIO()
    output_names = signature.output_names()
    dynamic = {"image": {1: "height", 2: "width"}}
    dynamic.update({name: {2: f"{name}_height", 3: f"{name}_width"} for name in output_names})
    # TorchScript-based exporter: the torch.export-based one specialises detectron2's padding to the sample's size.
    torch.onnx.export(
        network,
        (sample,),
        buffer,
        dynamo=False,
        input_names=["image"],
        output_names=output_names,
        dynamic_axes=dynamic,
        opset_version=ONNX_OPSET,
    )
    model = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(model, {_SIGNATURE: signature.to_json()})
    onnx.save(model, path)


class OnnxRuntimeNetwork:
    """An exported ONNX network run by ONNX Runtime, called as the :class:`DetectorNetwork` it was exported from."""

    def __init__(self, session):
        self.session = session

    def __call__(self, image: Tensor) -> Tuple[Tensor, ...]:
        """(3, h, w) float32 image -> the outputs, as CPU tensors."""
        outputs = self.session.run(None, {"image": image.detach().cpu().numpy()})
        return tuple(torch.from_numpy(x) for x in outputs)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _load_onnx(path: str, device: str) -> Tuple[Network, str]:
    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as many as PyTorch runs the network with
    try:
        session = onnxruntime.InferenceSession(path, options, providers=providers)
    except Exception as e:  # onnxruntime's errors (InvalidProtobuf, Fail, ...) share no base class but Exception
        raise ConfigError(f"cannot load ONNX model {path}: {_one_line(e)}") from None
    return OnnxRuntimeNetwork(session), session.get_modelmeta().custom_metadata_map.get(_SIGNATURE, "")


def _load_torchscript(path: str) -> Tuple[Network, str]:
    extra = {_SIGNATURE: ""}
    try:
        with _quiet_torchscript():
            # on the device it was traced on, which the trace records (detectron2 moves the image to the model's)
            module = torch.jit.load(path, _extra_files=extra)
    except RuntimeError as e:
        raise ConfigError(f"cannot load TorchScript model {path}: {_one_line(e)}") from None
    return module, extra[_SIGNATURE]


def load_network(path: str, detector, device: str = "cpu", names: SettingNames = SettingNames()) -> Network:
    """
    The network exported to ``path`` (by :func:`export_network`: ``.onnx`` runs in ONNX Runtime, on the GPU with
    its CUDA provider when ``device`` is "cuda" and the provider is installed; ``.ts`` or ``.pt`` in TorchScript, on
    the device it was traced on), checked to fit ``detector``, built from the config that post-processes its
    outputs.

    Raises:
        ConfigError: with one line, for a missing file, a checkpoint, a file of another kind, an unreadable one, one
            without a signature, or one exported from another detector (:meth:`NetworkSignature.check_fits`).
    """
    if not os.path.isfile(path):
        raise ConfigError(f"model file not found: {path}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".pth", ".pkl"):
        raise ConfigError(
            f"{path} is a checkpoint, not an exported model: give it as {names.weights}, or export it with "
            "tools/export.py and give the .onnx or .ts file as --model"
        )
    if suffix == ".onnx":
        network, text = _load_onnx(path, device)
    elif suffix in (".ts", ".pt"):
        network, text = _load_torchscript(path)
    else:
        raise ConfigError(f"{path}: an exported model is a .onnx (ONNX Runtime) or .ts (TorchScript) file")
    try:
        signature = NetworkSignature.from_json(text)
    except ValueError:
        raise ConfigError(
            f"{path} has no EFL network signature: it was not written by tools/export.py, which records the "
            "detector it was exported from"
        ) from None
    signature.check_fits(detector, path, names)
    return network
