"""PSNR / SSIM on Y (gsasr.metrics) against an independent numpy float64 computation of BasicSR's formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gsasr.metrics import crop_border_for, psnr_y, ssim_y, to_uint8_levels, y_channel


def _numpy_y(rgb255: np.ndarray) -> np.ndarray:
    """BT.601 luma the MATLAB way: rgb2ycbcr on [0, 1] then back to 0..255 levels."""
    rgb = rgb255.astype(np.float64) / 255.0
    return (np.tensordot(np.array([65.481, 128.553, 24.966]), rgb, axes=(0, 0)) + 16.0)


def _numpy_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(255.0 ** 2 / np.mean((a - b) ** 2))


def _numpy_ssim(a: np.ndarray, b: np.ndarray) -> float:
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()

    def valid_filter(x):
        windows = np.lib.stride_tricks.sliding_window_view(x, (11, 11))
        return np.einsum("ijkl,kl->ij", windows, w)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = valid_filter(a), valid_filter(b)
    s_a = valid_filter(a * a) - mu_a ** 2
    s_b = valid_filter(b * b) - mu_b ** 2
    s_ab = valid_filter(a * b) - mu_a * mu_b
    return float(np.mean(((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (s_a + s_b + c2))))


def _pair(seed=0, h=40, w=37):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 256, (3, h, w)).astype(np.float64)
    sr = np.clip(gt + rng.normal(0, 12, gt.shape), 0, 255).round()
    return sr, gt


@pytest.mark.parametrize("border", [0, 3, 8])
def test_psnr_and_ssim_match_the_numpy_formulas(border):
    sr, gt = _pair()
    c = slice(border, -border) if border else slice(None)
    ya, yb = _numpy_y(sr)[c, c], _numpy_y(gt)[c, c]
    assert psnr_y(torch.from_numpy(sr), torch.from_numpy(gt), border) == pytest.approx(_numpy_psnr(ya, yb), abs=1e-10)
    assert ssim_y(torch.from_numpy(sr), torch.from_numpy(gt), border) == pytest.approx(_numpy_ssim(ya, yb), abs=1e-10)


def test_y_channel_levels_and_identities():
    white, black = torch.full((3, 2, 2), 255.0), torch.zeros(3, 2, 2)
    assert torch.allclose(y_channel(white), torch.tensor(235.0, dtype=torch.float64))
    assert torch.allclose(y_channel(black), torch.tensor(16.0, dtype=torch.float64))
    sr, _ = _pair()
    t = torch.from_numpy(sr)
    assert psnr_y(t, t, 0) == math.inf and ssim_y(t, t, 0) == pytest.approx(1.0, abs=1e-12)


def test_a_uniform_luma_error_gives_the_closed_form_psnr():
    gt = torch.full((3, 16, 16), 100.0, dtype=torch.float64)
    sr = gt + 255.0 / (65.481 + 128.553 + 24.966)  # +1 level of Y
    assert psnr_y(sr, gt, 0) == pytest.approx(20 * math.log10(255.0), abs=1e-9)


def test_crop_border_and_rounding_rules():
    assert [crop_border_for(s) for s in (2, 3.7, 4, 8, 12, 30)] == [2, 3, 4, 8, 8, 8]
    assert torch.equal(to_uint8_levels(torch.tensor([-0.1, 0.4 / 255, 1.6 / 255, 1.2])),
                       torch.tensor([0.0, 0.0, 2.0, 255.0], dtype=torch.float64))


def test_ssim_refuses_images_smaller_than_its_window():
    with pytest.raises(ValueError, match="at least 11"):
        ssim_y(torch.zeros(3, 20, 20), torch.zeros(3, 20, 20), 8)
