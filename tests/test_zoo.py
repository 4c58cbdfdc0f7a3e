"""The declared specs against the built network, and the names people cite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from app.core.errors import UnknownLayer, UnknownModel
from app.core.zoo import ModelSpec, get_model
from precompute.models.inceptionv1 import InceptionV1


def test_declared_channels_and_sizes_match_the_built_network(spec: ModelSpec) -> None:
    net = InceptionV1(spec).eval()
    with torch.no_grad():
        activations = net(torch.rand(1, 3, spec.input_size, spec.input_size))
    assert set(activations) == set(spec.layer_names)
    for layer in spec.layers:
        shape = tuple(activations[layer.name].shape)
        expected = (1, layer.channels) if layer.kind == "logits" else (1, layer.channels, layer.size, layer.size)
        assert shape == expected, layer.name


def test_declared_channels_are_the_weight_files_own(spec: ModelSpec, weights_dir: Path) -> None:
    """Independent of the spec: each layer's bias file holds one float32 per unit."""
    for layer in spec.layers:
        if layer.weights is not None:
            assert (weights_dir / f"weights/{layer.weights}_bias.bin").stat().st_size == 4 * layer.channels, layer.name


def test_forward_stops_at_the_requested_layer(spec: ModelSpec) -> None:
    net = InceptionV1(spec).eval()
    calls: list[str] = []
    handle = net.classifier.register_forward_hook(lambda *_: calls.append("classifier"))
    try:
        with torch.no_grad():
            out = net(torch.rand(1, 3, 224, 224), ("mixed3b_3x3",))
    finally:
        handle.remove()
    assert list(out) == ["mixed3b_3x3"]
    assert calls == []


def test_inceptionv1_names_and_counts(spec: ModelSpec) -> None:
    assert sum(layer.channels for layer in spec.main_layers) == 5808
    assert [layer.name for layer in spec.main_layers][:4] == ["conv2d0", "conv2d1", "conv2d2", "mixed3a"]
    assert spec.layer("mixed4a").channels == 512
    assert spec.layer("mixed3a_5x5_bottleneck").channels == 16
    assert spec.layer("mixed4c").receptive_field == 299
    assert spec.layer("softmax2").channels == 1000
    assert spec.unit_label(spec.layer("softmax2"), 488) == "chain"
    assert spec.unit_label(spec.layer("mixed4c"), 447) is None


def test_unknown_names_suggest_the_nearest(spec: ModelSpec) -> None:
    with pytest.raises(UnknownLayer, match="mixed4c"):
        spec.layer("mixed4x")
    with pytest.raises(UnknownModel, match="inceptionv1_caffe"):
        get_model("inceptionv2")


def test_receptive_field_box_is_centred_and_clipped(spec: ModelSpec) -> None:
    mixed3a = spec.layer("mixed3a")  # receptive field 59, stride 8, position 0 centred on pixel 6
    assert mixed3a.position_box(3, 5, 224) == (46 - 29, 30 - 29, 46 + 30, 30 + 30)
    assert mixed3a.position_box(0, 0, 224) == (0, 0, 36, 36)
    assert spec.layer("mixed4c").position_box(7, 7, 224) == (0, 0, 224, 224)


def test_the_web_side_never_imports_torch() -> None:
    code = "import sys, app.core.zoo, app.core.store, app.core.store.summary, app.core.settings; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
