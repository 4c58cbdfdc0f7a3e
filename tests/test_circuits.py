"""Circuit weights: composed kernels against autograd, and the stage against a real store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sqlalchemy import func, select

from app.core.store import Edge, Layer, Run, Store, Unit
from app.core.store.summary import coverage
from app.core.zoo import ModelSpec
from precompute.stages.catalog import catalog
from precompute.stages.circuits import expand, pairs, run_circuits, select_edges
from precompute.models.inceptionv1 import InceptionV1
from precompute.running.context import Stage


def _linear_block(net: InceptionV1, spec: ModelSpec, block: str, x: torch.Tensor) -> torch.Tensor:
    """The block with ReLUs as identity and max pools as average pools (the stand-ins)."""
    convs = net.parameterized()
    conv = lambda name, h: F.conv2d(h, convs[name].weight, None, padding=convs[name].padding)  # noqa: E731
    if spec.layer(f"{block}_1x1").pools:
        x = F.avg_pool2d(x, 3, 2)
    return torch.cat(
        [
            conv(f"{block}_1x1", x),
            conv(f"{block}_3x3", conv(f"{block}_3x3_bottleneck", x)),
            conv(f"{block}_5x5", conv(f"{block}_5x5_bottleneck", x)),
            conv(f"{block}_pool_reduce", F.avg_pool2d(x, 3, 1, 1, count_include_pad=True)),
        ],
        dim=1,
    )


@pytest.mark.parametrize(("block", "y", "x"), [("mixed3b", 14, 13), ("mixed4a", 7, 6)])
def test_expanded_weights_equal_the_jacobian_of_the_linear_block(net, spec: ModelSpec, block: str, y: int, x: int) -> None:  # noqa: ANN001
    """Jacobian of one output position w.r.t. the previous main layer vs. the composed kernels."""
    layer = spec.layer(block)
    previous = spec.layer(layer.previous)
    inputs = torch.randn(1, previous.channels, previous.size, previous.size)
    jacobian = torch.autograd.functional.jacobian(
        lambda h: _linear_block(net, spec, block, h)[0, :, y, x], inputs
    )[:, 0]  # (out, in, H, W)
    for piece in net.linear_map(previous, layer):
        kernel = piece.kernel
        top, left = y * kernel.stride - kernel.padding, x * kernel.stride - kernel.padding
        assert top >= 0 and left >= 0 and top + kernel.size <= previous.size
        window = jacobian[piece.offset : piece.offset + kernel.weights.shape[0], :, top : top + kernel.size, left : left + kernel.size]
        scale = window.abs().max()
        assert torch.allclose(kernel.weights, window, rtol=1e-4, atol=1e-4 * float(scale)), piece.offset
        outside = jacobian[piece.offset : piece.offset + kernel.weights.shape[0]].abs().sum() - window.abs().sum()
        assert float(outside) <= 1e-4 * float(window.abs().sum())


def test_indirect_weights_equal_the_jacobian_of_two_linear_stages(net, spec: ModelSpec) -> None:  # noqa: ANN001
    """conv2d1 -> mixed3a through conv2d2 (and the LRN and pool as their stand-ins), against autograd."""
    convs = net.parameterized()
    conv2d2 = convs["conv2d2"]

    def stages(h: torch.Tensor) -> torch.Tensor:
        h = F.conv2d(h, conv2d2.weight, None, padding=1)
        return _linear_block(net, spec, "mixed3a", h)  # the block's entry pool is in the helper

    inputs = torch.randn(1, 64, 56, 56)
    y = x = 12
    jacobian = torch.autograd.functional.jacobian(lambda h: stages(h)[0, :, y, x], inputs)[:, 0]
    for piece in net.linear_map(spec.layer("conv2d1"), spec.layer("mixed3a")):
        kernel = piece.kernel
        top, left = y * kernel.stride - kernel.padding, x * kernel.stride - kernel.padding
        window = jacobian[piece.offset : piece.offset + kernel.weights.shape[0], :, top : top + kernel.size, left : left + kernel.size]
        assert torch.allclose(kernel.weights, window, rtol=1e-4, atol=1e-4 * float(window.abs().max())), piece.offset
        outside = jacobian[piece.offset : piece.offset + kernel.weights.shape[0]].abs().sum() - window.abs().sum()
        assert float(outside) <= 1e-4 * float(window.abs().sum())


def _raw(weights_dir: Path, name: str) -> np.ndarray:
    """A Caffe filter straight from its file, as the weights README describes: (out, in, kh, kw)."""
    sizes = {"inception_3b/1x1": (128, 1, 1, 256), "inception_3b/3x3_reduce": (128, 1, 1, 256),
             "inception_3b/3x3": (192, 3, 3, 128)}
    flat = np.fromfile(weights_dir / f"weights/{name}_filter.bin", "<f4")
    assert flat.size == np.prod(sizes[name])
    return flat.reshape(sizes[name]).transpose(0, 3, 1, 2).astype(np.float64)


def test_stored_inputs_are_the_strongest_by_l2_from_the_raw_weight_files(store: Store, spec: ModelSpec, net, weights_dir: Path) -> None:  # noqa: ANN001
    """Independently of the network and kernel code: numpy on the raw files, top 50 by L2 norm."""
    catalog(store, spec)
    run_circuits(Stage(store, net, "w", torch.device("cpu"), progress=False), [spec.layer("mixed3b"), spec.layer("mixed3b_3x3")])
    one_by_one = _raw(weights_dir, "inception_3b/1x1")[:, :, 0, 0]  # mixed3a -> mixed3b units 0..127
    bottleneck = _raw(weights_dir, "inception_3b/3x3_reduce")[:, :, 0, 0]
    spatial = _raw(weights_dir, "inception_3b/3x3")
    composed = np.einsum("omyx,mi->oiyx", spatial, bottleneck)  # mixed3a -> mixed3b units 128..319
    expected = {
        ("mixed3b", 5): np.abs(one_by_one[5]),
        ("mixed3b", 128 + 40): np.sqrt((composed[40] ** 2).sum(axis=(1, 2))),
        ("mixed3b_3x3", 7): np.sqrt((spatial[7] ** 2).sum(axis=(1, 2))),
    }
    with store.session() as session:
        for (layer, unit), norms in expected.items():
            target = session.scalar(select(Unit.id).join(Layer).where(Layer.name == layer, Unit.index == unit))
            stored = session.execute(
                select(Unit.index, Edge.norm, Edge.weight, Edge.kind).join(Unit, Edge.source_id == Unit.id)
                .where(Edge.target_id == target, Edge.kind != "indirect")
            ).all()
            # Stored: the target's 50 strongest inputs, plus edges kept as a source's strongest outputs.
            strongest = set(np.argsort(-norms)[:50].tolist())
            top = sorted(stored, key=lambda row: -row.norm)[:50]
            assert {row.index for row in top} == strongest, (layer, unit)
            for row in stored:
                assert row.norm == pytest.approx(norms[row.index], rel=1e-4, abs=1e-6)
    # the sign is the sum's: some of the strongest inputs inhibit
    assert any(row.weight < 0 for row in stored) and any(row.weight > 0 for row in stored)


def test_ranking_by_norm_keeps_kernels_whose_parts_cancel(net, spec: ModelSpec) -> None:  # noqa: ANN001
    expanded = expand(net, pairs(spec, [spec.layer("mixed4b")])[0])
    norms = torch.cat([piece.kernel.norms() for piece in expanded.pieces])
    summed = torch.cat([piece.kernel.summed() for piece in expanded.pieces])
    edges = set(select_edges(expanded))
    target = 447 % 512
    assert all((target, source) in edges for source in norms[target].topk(50).indices.tolist())
    source = 97
    assert all((t, source) in edges for t in norms[:, source].topk(50).indices.tolist())
    # Strong kernels whose parts cancel in the sum: kept by norm, where ranking by the sum loses them.
    by_norm, by_sum = norms.topk(50, dim=1).indices, summed.abs().topk(50, dim=1).indices
    lost = [(row, int(s)) for row in range(norms.shape[0]) for s in set(by_norm[row].tolist()) - set(by_sum[row].tolist())]
    assert len(lost) > 1000 and all(edge in edges for edge in lost)


def test_circuits_stage_fills_and_resumes(store: Store, spec: ModelSpec, net) -> None:  # noqa: ANN001
    catalog(store, spec)
    chosen = [spec.layer(name) for name in ("conv2d1", "mixed3a_3x3", "mixed3a", "softmax2")]
    first = run_circuits(Stage(store, net, "test-weights", torch.device("cpu"), progress=False), chosen)
    # conv2d1, mixed3a_3x3, mixed3a and its indirect pair from conv2d1, softmax2
    assert (first.pairs_written, first.pairs_reused) == (5, 0) and first.edges > 0
    again = run_circuits(Stage(store, net, "test-weights", torch.device("cpu"), progress=False), chosen)
    assert (again.pairs_written, again.pairs_reused) == (0, 5)
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Edge)) == first.edges
        chain = session.scalar(select(Unit.id).join(Layer).where(Layer.name == "softmax2", Unit.index == 488))
        inputs = session.scalars(select(Edge).where(Edge.target_id == chain).order_by(Edge.norm.desc())).all()
        mixed = session.scalar(select(Unit.id).join(Layer).where(Layer.name == "mixed3a", Unit.index == 3))
        indirect = session.scalars(select(Edge).where(Edge.target_id == mixed, Edge.kind == "indirect")).all()
        notes = {run.params["target"]: run.params["approximation"] for run in session.scalars(select(Run).where(Run.stage == "circuits"))}
    assert len(inputs) >= 50 and any(e.weight > 0 for e in inputs) and any(e.weight < 0 for e in inputs)
    assert all(store.blobs.has(edge.kernel_key) for edge in inputs)
    assert inputs[0].kernel == [[pytest.approx(inputs[0].weight, abs=1e-5)]]
    assert len(indirect) == 50 and all(e.kernel_key is None and e.norm > 0 for e in indirect)
    assert "local response normalization" in notes["conv2d1"] and notes["softmax2"] is None
    with store.transaction() as session:  # as if conv2d1's pair had been written before issue 9
        run = session.scalar(select(Run).where(Run.stage == "circuits", Run.params["target"].as_string() == "conv2d1"))
        run.params = {**run.params, "algorithm": 1}
    with store.session() as session:
        stale = {layer.name: layer.stale for layer in coverage(session)[0].layers if layer.stale}
    assert stale == {"conv2d1": {"circuits": 64}}
