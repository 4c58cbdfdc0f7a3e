"""Circuit weights: composed kernels against autograd, and the stage against a real store."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sqlalchemy import func, select

from app.store import Edge, Layer, Store, Unit
from app.zoo import ModelSpec
from precompute.catalog import catalog
from precompute.circuits import main_pieces, run_circuits, select_edges, pairs
from precompute.network import InceptionV1


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
    for piece in main_pieces(net, spec, layer):
        kernel = piece.kernel
        top, left = y * kernel.stride - kernel.padding, x * kernel.stride - kernel.padding
        assert top >= 0 and left >= 0 and top + kernel.size <= previous.size
        window = jacobian[piece.offset : piece.offset + kernel.weights.shape[0], :, top : top + kernel.size, left : left + kernel.size]
        scale = window.abs().max()
        assert torch.allclose(kernel.weights, window, rtol=1e-4, atol=1e-4 * float(scale)), piece.offset
        outside = jacobian[piece.offset : piece.offset + kernel.weights.shape[0]].abs().sum() - window.abs().sum()
        assert float(outside) <= 1e-4 * float(window.abs().sum())


def test_every_unit_keeps_its_strongest_inputs(net, spec: ModelSpec) -> None:  # noqa: ANN001
    pair = next(pairs(net, spec, [spec.layer("mixed4b")]))
    summed = torch.cat([piece.kernel.summed() for piece in pair.pieces])
    edges = set(select_edges(pair))
    target = 447 % 512
    strongest = summed[target].topk(16).indices.tolist()
    weakest = (-summed[target]).topk(16).indices.tolist()
    assert all((target, source) in edges for source in strongest + weakest)
    source = 97
    assert all((t, source) in edges for t in summed[:, source].topk(16).indices.tolist())


def test_circuits_stage_fills_and_resumes(store: Store, spec: ModelSpec, net) -> None:  # noqa: ANN001
    catalog(store, spec)
    chosen = [spec.layer(name) for name in ("conv2d1", "mixed3a_3x3", "mixed3a", "softmax2")]
    first = run_circuits(store, spec, net, "test-weights", chosen, progress=False)
    assert (first.pairs_written, first.pairs_reused) == (4, 0) and first.edges > 0
    again = run_circuits(store, spec, net, "test-weights", chosen, progress=False)
    assert (again.pairs_written, again.pairs_reused) == (0, 4)
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Edge)) == first.edges
        chain = session.scalar(select(Unit.id).join(Layer).where(Layer.name == "softmax2", Unit.index == 488))
        inputs = session.scalars(select(Edge).where(Edge.target_id == chain).order_by(Edge.weight.desc())).all()
    assert len(inputs) >= 32 and inputs[0].weight > 0 > inputs[-1].weight
    assert all(store.blobs.has(edge.kernel_key) for edge in inputs)
    assert inputs[0].kernel == [[pytest.approx(inputs[0].weight, abs=1e-5)]]
