"""Loading BVLC GoogLeNet's checked Caffe parameters into InceptionV1 built from its spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from app.core.zoo import ModelSpec
from precompute.models.inceptionv1 import InceptionV1
from precompute.models.weight_files import Checksums, expected_shapes, verify


def load_network(spec: ModelSpec, folder: Path) -> tuple[InceptionV1, Checksums]:
    """The network of ``spec`` with the checked parameters from ``folder``, frozen, in eval mode."""
    checksums = verify(folder, spec)
    net = InceptionV1(spec)
    modules = net.parameterized()
    shapes = expected_shapes(spec)
    with torch.no_grad():
        for layer in spec.layers:
            if layer.weights is None:
                continue
            filters = np.fromfile(folder / f"weights/{layer.weights}_filter.bin", "<f4")
            kernel = torch.from_numpy(filters.reshape(shapes[f"weights/{layer.weights}_filter.bin"]).transpose(0, 3, 1, 2))
            module = modules[layer.name]
            module.weight.copy_(kernel.reshape(module.weight.shape))
            module.bias.copy_(torch.from_numpy(np.fromfile(folder / f"weights/{layer.weights}_bias.bin", "<f4")))
    # Channels-last convolutions are markedly faster on CPU and GPU alike (issue 3's measurements).
    net.to(memory_format=torch.channels_last).eval().requires_grad_(False)
    return net, checksums
