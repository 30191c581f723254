"""Draw docs/how_it_works.png: one set of 2D Gaussians rendered at three scales with the project's renderer.

The Gaussians here are built by hand from a tiny synthetic image (16 per pixel, the pixel's colour), not predicted
by a trained network: the picture shows the representation, not model quality. Run: python docs/make_how_it_works.py
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gsasr.render import render_gaussians  # noqa: E402

LR = 10            # low-resolution side
PANEL = 300        # displayed size of each panel
SIGMA_PARAM = 0.24  # std in LR pixels is SIGMA_PARAM / 1.2 = 0.2, wide enough to overlap the 4x4 sub-grid
# 16 unit-peak Gaussians per LR pixel sum to 16 * 2 pi sigma^2 per pixel; the opacity divides that back out.
OPACITY = 1.0 / (16 * 2 * math.pi * (SIGMA_PARAM / 1.2) ** 2)


def synthetic_lr() -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(-1, 1, LR), torch.linspace(-1, 1, LR), indexing="ij")
    disc = ((x + 0.2) ** 2 + (y + 0.1) ** 2 < 0.45).float()
    r = 0.15 + 0.7 * disc
    g = 0.25 + 0.5 * (x + 1) / 2 * (1 - disc)
    b = 0.8 - 0.6 * disc + 0.1 * (y > 0.5).float()
    return torch.stack([r, g, b]).clamp(0.02, 0.98)


def gaussians_for(image: torch.Tensor) -> torch.Tensor:
    """(16*H*W, 9) raw parameters in the official order: 4x4 Gaussians per pixel at the sub-cell centres."""
    _, h, w = image.shape
    fine = image.repeat_interleave(4, 1).repeat_interleave(4, 2)          # (3, 4h, 4w)
    ys, xs = torch.meshgrid((torch.arange(4 * h) + 0.5) / (4 * h), (torch.arange(4 * w) + 0.5) / (4 * w),
                            indexing="ij")
    logit = lambda p: torch.log(p / (1 - p))  # noqa: E731
    n = 16 * h * w
    raw = torch.zeros(n, 9)
    raw[:, 0:2] = logit(torch.tensor((SIGMA_PARAM - 1e-6) / 0.99999))
    raw[:, 3] = math.log(OPACITY / (1 - OPACITY))
    raw[:, 4:7] = logit(fine.reshape(3, -1).T)
    raw[:, 7] = xs.reshape(-1)
    raw[:, 8] = ys.reshape(-1)
    return raw


def panel(img: torch.Tensor, title: str) -> Image.Image:
    arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    im = Image.fromarray(arr).resize((PANEL, PANEL), Image.NEAREST)
    out = Image.new("RGB", (PANEL, PANEL + 28), "white")
    out.paste(im, (0, 28))
    ImageDraw.Draw(out).text((6, 7), title, fill="black")
    return out


def main() -> None:
    lr = synthetic_lr()
    raw = gaussians_for(lr)
    panels = [panel(lr, f"input {LR}x{LR}")]
    for s in (2.0, 3.7, 12.0):
        size = math.floor(s * LR)
        sr = render_gaussians(raw, s, (size, size))
        panels.append(panel(sr, f"x{s:g}: {size}x{size}"))
    sheet = Image.new("RGB", (len(panels) * (PANEL + 12) - 12, PANEL + 28), "white")
    for i, p in enumerate(panels):
        sheet.paste(p, (i * (PANEL + 12), 0))
    out = Path(__file__).with_name("how_it_works.png")
    sheet.save(out)
    print(out)


if __name__ == "__main__":
    main()
