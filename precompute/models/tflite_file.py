"""Convolution weights out of a TFLite flatbuffer, dequantized, with no TensorFlow.

PyPI's ``tflite`` package is the flatbuffer schema compiled for Python: it
reads operators, tensors and buffers. Weights of a quantized file are uint8
with one scale and zero point per tensor (``real = scale * (q - zero)``);
biases are int32 with scale = input scale x weight scale. Layouts become
PyTorch's: CONV_2D (out, kh, kw, in) -> (out, in, kh, kw), DEPTHWISE_CONV_2D
(1, kh, kw, channels) -> (channels, 1, kh, kw).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.core.errors import WeightsError

CONVOLUTIONS = ("CONV_2D", "DEPTHWISE_CONV_2D")


@dataclass(frozen=True)
class Convolution:
    #: The operator's scope in the graph, e.g. ``expanded_conv_3/expand`` or ``Logits/Conv2d_1c_1x1``.
    scope: str
    kind: str
    #: PyTorch layout, float32.
    weight: np.ndarray
    bias: np.ndarray


def convolutions(path: Path, prefix: str) -> list[Convolution]:
    """Every convolution of the file's first subgraph, in operator order, scopes without ``prefix``."""
    import tflite
    from tflite.BuiltinOperator import BuiltinOperator

    try:
        data = path.read_bytes()
        model = tflite.Model.GetRootAsModel(data, 0)
        graph = model.Subgraphs(0)
    except Exception as error:  # noqa: BLE001 - a damaged flatbuffer raises anything
        raise WeightsError(f"{path}: not a TFLite model ({type(error).__name__}: {error})") from error
    if graph is None:
        raise WeightsError(f"{path}: a TFLite file without a graph")
    codes = {value: name for name, value in vars(BuiltinOperator).items() if not name.startswith("_")}
    found = []
    for index in range(graph.OperatorsLength()):
        operator = graph.Operators(index)
        code = model.OperatorCodes(operator.OpcodeIndex())
        kind = codes.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        if kind not in CONVOLUTIONS:
            continue
        weight, bias = (graph.Tensors(operator.Inputs(slot)) for slot in (1, 2))
        name = weight.Name().decode().split(";")[0]
        scope = name.removeprefix(prefix).rsplit("/", 1)[0]
        kernel = _dequantized(model, weight, path)
        layout = (0, 3, 1, 2) if kind == "CONV_2D" else (3, 0, 1, 2)
        found.append(Convolution(scope, kind, np.ascontiguousarray(kernel.transpose(layout)), _dequantized(model, bias, path)))
    return found


def _dequantized(model, tensor, path: Path) -> np.ndarray:  # noqa: ANN001 - the schema's generated classes
    from tflite.TensorType import TensorType

    types = {TensorType.UINT8: np.uint8, TensorType.INT8: np.int8, TensorType.INT32: np.int32,
             TensorType.FLOAT32: np.float32}
    kind = types.get(tensor.Type())
    buffer = model.Buffers(tensor.Buffer())
    if kind is None or buffer is None or buffer.DataLength() == 0:
        raise WeightsError(f"{path}: tensor {tensor.Name().decode()} holds no constant weights of a known type")
    shape = tuple(int(side) for side in tensor.ShapeAsNumpy())
    values = buffer.DataAsNumpy().view(kind)
    if values.size != int(np.prod(shape)):
        raise WeightsError(f"{path}: tensor {tensor.Name().decode()} has {values.size} values for shape {shape}")
    values = values.reshape(shape)
    if kind is np.float32:
        return values.astype(np.float32)
    quantization = tensor.Quantization()
    scale, zero = quantization.ScaleAsNumpy(), quantization.ZeroPointAsNumpy()
    if not isinstance(scale, np.ndarray) or scale.size != 1:
        raise WeightsError(f"{path}: tensor {tensor.Name().decode()} is not quantized per tensor")
    return (float(scale[0]) * (values.astype(np.float64) - float(zero[0]))).astype(np.float32)
