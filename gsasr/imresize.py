"""MATLAB-style bicubic ``imresize``: how the paper's test LR images are made (spec F, BasicSR's ``imresize``).

MATLAB's algorithm, as documented by MathWorks and followed by BasicSR:

* Keys' cubic kernel with a = -0.5. When shrinking by a factor ``scale`` < 1 it is stretched to
  ``scale * cubic(scale * x)`` (support 4 / scale input pixels): the antialiasing that makes MATLAB's LR images
  smoother than a plain bicubic sampling.
* Output pixel ``u`` (1-based) samples input position ``u / scale + 0.5 (1 - 1 / scale)``; its weights are
  normalised to sum to one; taps outside the image are mirrored with the edge pixel repeated (``symmetric``).
* Output length ``ceil(length * scale)``; height is resized first, then width (in float64, the order changes
  nothing that survives rounding to 8 bits).
"""
from __future__ import annotations

import math

import torch


def cubic(x: torch.Tensor) -> torch.Tensor:
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


def resize_weights(in_len: int, out_len: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, weights), each (out_len, taps): output i = sum_k weights[i, k] * input[indices[i, k]]."""
    antialias = scale < 1
    width = 4.0 / scale if antialias else 4.0
    u = torch.arange(1, out_len + 1, dtype=torch.float64)
    x = u / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(x - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]  # 1-based input positions
    dist = x[:, None] - idx
    weights = scale * cubic(dist * scale) if antialias else cubic(dist)
    weights = weights / weights.sum(dim=1, keepdim=True)
    # Mirror with the edge repeated: period 2 * in_len over 1..in_len, in_len..1.
    zero_based = (idx - 1).long() % (2 * in_len)
    indices = torch.where(zero_based < in_len, zero_based, 2 * in_len - 1 - zero_based)
    keep = weights.abs().sum(dim=0) > 0  # taps that never contribute (MATLAB drops them too)
    return indices[:, keep], weights[:, keep]


def _resize_axis(image: torch.Tensor, dim: int, out_len: int, scale: float) -> torch.Tensor:
    indices, weights = resize_weights(image.shape[dim], out_len, scale)
    moved = image.movedim(dim, -1)                                   # (..., in_len)
    gathered = moved[..., indices]                                   # (..., out_len, taps)
    return (gathered * weights.to(moved.dtype)).sum(dim=-1).movedim(-1, dim)


def imresize(image: torch.Tensor, scale: float, out_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """Resize (..., H, W) by ``scale`` the MATLAB way, in float64; output ``ceil(H*scale) x ceil(W*scale)``
    unless ``out_hw`` is given (then ``scale`` still sets the kernel and the sampling positions)."""
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be positive, got {scale!r}")
    h, w = image.shape[-2:]
    oh, ow = out_hw if out_hw is not None else (math.ceil(h * scale), math.ceil(w * scale))
    x = image.to(torch.float64)
    x = _resize_axis(x, x.dim() - 2, oh, scale)
    return _resize_axis(x, x.dim() - 1, ow, scale)
