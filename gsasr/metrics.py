"""The paper's image metrics (spec F): PSNR and SSIM on the Y channel, as BasicSR computes them.

* Images are 8-bit RGB (the SR output is rounded to 8 bits first, as the official test saves it).
* Y is MATLAB's BT.601 luma on the [16, 235] scale: ``16 + (65.481 R + 128.553 G + 24.966 B) / 255`` for R, G, B in
  0..255.
* ``crop_border`` pixels are removed on every side before measuring: the scale's integer part, at most 8.
* PSNR = 10 log10(255^2 / MSE) in float64 (infinite for identical images).
* SSIM: 11 x 11 Gaussian window (sigma 1.5), 'valid' filtering, C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, the
  mean of the SSIM map, in float64.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
MAX_CROP_BORDER = 8


def crop_border_for(scale: float) -> int:
    return min(int(scale), MAX_CROP_BORDER)


def to_uint8_levels(image: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> float64 values 0..255, rounded as when saving an 8-bit image."""
    return (image.to(torch.float64).clamp(0, 1) * 255.0).round()


def y_channel(rgb255: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB in 0..255 -> (H, W) BT.601 luma in [16, 235], float64."""
    r, g, b = rgb255.to(torch.float64)
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def _crop(image: torch.Tensor, border: int) -> torch.Tensor:
    return image[..., border:image.shape[-2] - border, border:image.shape[-1] - border] if border else image


def psnr_y(sr255: torch.Tensor, gt255: torch.Tensor, crop_border: int) -> float:
    a, b = _crop(y_channel(sr255), crop_border), _crop(y_channel(gt255), crop_border)
    mse = torch.mean((a - b) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def _gaussian_window() -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    g = torch.exp(-x ** 2 / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    return torch.outer(g, g)[None, None]


def ssim_y(sr255: torch.Tensor, gt255: torch.Tensor, crop_border: int) -> float:
    a = _crop(y_channel(sr255), crop_border)[None, None]
    b = _crop(y_channel(gt255), crop_border)[None, None]
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels after the border crop, got "
                         f"{tuple(a.shape[-2:])}")
    window = _gaussian_window()

    def blur(x):
        return F.conv2d(x, window)  # 'valid': no padding

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean().item()
