"""Image parameterizations: each returns ``(params, image_fn)`` with images as RGB in [0, 1].

The Fourier basis scales each frequency by 1/frequency so that every
frequency is equally easy to change (the article's "preconditioning"), and
colour is decorrelated with the square root of ImageNet's colour covariance
before a sigmoid maps it into [0, 1]; both as in Lucid and the article. The
pixel basis is kept for comparison: it gives the high-frequency noise the
article shows next to the Fourier results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

#: Square root of ImageNet's colour covariance (Lucid's ``color_correlation_svd_sqrt``).
COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_CORRELATION = COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()

ImageFn = Callable[[], Tensor]
Parameterization = Callable[[int, Sequence[torch.Generator], torch.device], tuple[list[Tensor], ImageFn]]


def _decorrelated_rgb(image: Tensor) -> Tensor:
    """Decorrelated colour space to RGB in [0, 1]; one channel (a grayscale network's image) to a gray RGB image,
    and any other count but 3 to that many channels in [0, 1], with no colour decorrelation (there is no colour)."""
    if image.shape[1] == 1:
        return torch.sigmoid(image).expand(-1, 3, -1, -1)
    if image.shape[1] != 3:  # a multispectral network's channels: no colour to decorrelate
        return torch.sigmoid(image)
    mixed = torch.einsum("bchw,dc->bdhw", image, COLOR_CORRELATION.to(image.device))
    return torch.sigmoid(mixed)


def frequencies(height: int, width: int) -> Tensor:
    """Spatial frequency magnitude of each coefficient of a real 2-D FFT."""
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    return (fx * fx + fy * fy).sqrt()


def fourier(size: int, sd: float = 0.01, decay_power: float = 1.0, channels: int = 3) -> Parameterization:
    """Fourier-basis, colour-decorrelated images of ``size`` px (Lucid's ``param.image(size, fft=True)``); with one
    channel, gray images (Lucent's ``param.image(size, channels=1)``: the sigmoid with no colour decorrelation, which
    Lucent applies only to 3 channels), repeated into R, G and B."""

    def make(batch: int, generators: Sequence[torch.Generator], device: torch.device) -> tuple[list[Tensor], ImageFn]:
        scale = 1.0 / frequencies(size, size).clamp(min=1.0 / size) ** decay_power
        shape = (channels, size, size // 2 + 1, 2)
        spectrum = torch.stack([torch.randn(shape, generator=g) * sd for g in generators]).to(device)
        spectrum.requires_grad_(True)
        scale = scale.to(device)[None, None, :, :, None]

        def image() -> Tensor:
            coefficients = torch.view_as_complex((scale * spectrum).contiguous())
            # Lucid divides by 4 so that the initial image's contrast matches its pixel basis.
            return _decorrelated_rgb(torch.fft.irfft2(coefficients, s=(size, size), norm="ortho") / 4.0)

        return [spectrum], image

    return make


def pixels(size: int, sd: float = 0.01, channels: int = 3) -> Parameterization:
    """Plain pixel-basis images (still colour-decorrelated), for comparison with `fourier`."""

    def make(batch: int, generators: Sequence[torch.Generator], device: torch.device) -> tuple[list[Tensor], ImageFn]:
        values = torch.stack([torch.randn((channels, size, size), generator=g) * sd for g in generators]).to(device)
        values.requires_grad_(True)
        return [values], lambda: _decorrelated_rgb(values)

    return make


PARAMETERIZATIONS = {"fourier": fourier, "pixels": pixels}
