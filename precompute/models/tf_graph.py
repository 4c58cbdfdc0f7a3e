"""Constant weights out of a frozen TensorFlow GraphDef (``tensorflow_inception_graph.pb``), without TensorFlow.

The GraphDef protocol buffers are read with the compiled TensorFlow protos
that tensorboardX ships (maintained, only protobuf underneath): each ``Const``
node's ``value`` attribute is a TensorProto, its numbers in
``tensor_content`` (or in ``float_val`` for small ones).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.core.errors import WeightsError

#: TensorProto's DT_FLOAT.
DT_FLOAT = 1


def constants(data: bytes, where: str) -> dict[str, np.ndarray]:
    """Every float constant of the graph by node name, in TensorFlow's layout."""
    from google.protobuf.message import DecodeError
    from tensorboardX.proto import graph_pb2

    graph = graph_pb2.GraphDef()
    try:
        graph.ParseFromString(data)
    except DecodeError as error:
        raise WeightsError(f"{where}: not a TensorFlow GraphDef ({error})") from error
    found = {}
    for node in graph.node:
        if node.op != "Const" or "value" not in node.attr:
            continue
        tensor = node.attr["value"].tensor
        if tensor.dtype != DT_FLOAT:
            continue
        shape = tuple(dim.size for dim in tensor.tensor_shape.dim)
        if tensor.tensor_content:
            values = np.frombuffer(tensor.tensor_content, "<f4")
        else:
            values = np.asarray(tensor.float_val, np.float32)
            if values.size == 1 and np.prod(shape) > 1:
                values = np.full(int(np.prod(shape)), values[0], np.float32)
        if values.size != int(np.prod(shape)):
            raise WeightsError(f"{where}: constant {node.name} has {values.size} values for shape {shape}")
        found[node.name] = values.reshape(shape)
    return found


def graph_bytes(path: Path, member: str = "tensorflow_inception_graph.pb", limit: int = 200_000_000) -> bytes:
    """The GraphDef in ``path``: a ``.pb`` file, or the member of a ``.zip`` (read at most ``limit`` bytes)."""
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            try:
                info = archive.getinfo(member)
            except KeyError:
                raise WeightsError(f"{path}: the archive holds no {member}") from None
            if info.file_size > limit:
                raise WeightsError(f"{path}: {member} is {info.file_size} bytes, over the {limit} cap")
            return archive.read(info)
    if path.stat().st_size > limit:
        raise WeightsError(f"{path}: {path.stat().st_size} bytes, over the {limit} cap")
    return path.read_bytes()
