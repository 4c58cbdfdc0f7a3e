"""A circuit's kernel checked against the Jacobian of the linear stand-in it claims to be (issue 5's test)."""

from __future__ import annotations

import torch

from precompute.models.base import Piece


def assert_kernel_is_the_jacobian(pieces: tuple[Piece, ...], stand_in, channels: int, size: int, y: int, x: int) -> None:  # noqa: ANN001
    inputs = torch.randn(1, channels, size, size, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda h: stand_in(h)[0, :, y, x], inputs)[:, 0]
    (piece,) = pieces
    kernel = piece.kernel
    top, left = y * kernel.stride - kernel.padding, x * kernel.stride - kernel.padding
    assert top >= 0 and left >= 0 and top + kernel.size <= size
    window = jacobian[:, :, top : top + kernel.size, left : left + kernel.size].float()
    assert torch.allclose(kernel.weights, window, rtol=1e-4, atol=1e-4 * float(window.abs().max()))
    outside = float(jacobian.abs().sum() - jacobian[:, :, top : top + kernel.size, left : left + kernel.size].abs().sum())
    assert outside <= 1e-4 * float(window.abs().sum())
