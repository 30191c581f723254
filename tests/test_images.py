"""Test images and image comparisons shared by several test files (tiling on CPU and on CUDA)."""
from __future__ import annotations

import math

import torch


def structured_image(h: int = 192, w: int = 160) -> torch.Tensor:
    """Gradients, hard edges and thin text-like strokes: what exposes seams and lost context."""
    y = torch.linspace(0, 1, h)[:, None].expand(h, w)
    x = torch.linspace(0, 1, w)[None, :].expand(h, w)
    r = 0.2 + 0.6 * x
    g = 0.8 - 0.6 * y
    b = 0.5 + 0.4 * torch.sin(12 * x + 7 * y)
    img = torch.stack([r, g, b]).clone()
    img[:, h // 3:h // 2, w // 4:3 * w // 4] = torch.tensor([0.9, 0.1, 0.2])[:, None, None]  # a block with edges
    for k in range(8):  # strokes one and two pixels wide, crossing tile borders
        row = 20 + 19 * k
        img[:, row:row + 1 + k % 2, 10:w - 10] = 0.05
        col = 9 + 18 * k
        img[:, 100:180, col:col + 1 + k % 2] = 0.95
    return img[None].clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
