"""The self-check of the native rasteriser backends: one small fixed render compared with the reference.

A compiled kernel that is wrong on a user's machine (a miscompiled CUDA build, a Triton or driver bug, a GPU none
of us has tested on) would otherwise give a wrong picture and no error. So the first time a native backend (cpu,
cuda, triton) renders on a device in a process, :mod:`gsasr.render` first renders :func:`fixed_case` with it and
with the PyTorch reference on that device; a difference above :data:`SELF_CHECK_ABS`, or an exception, switches the
backend off for the process (``backend="auto"`` moves on to the next one). ``python -m gsasr info`` shows the
outcome for each backend.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from . import reference

SELF_CHECK_ABS: float = 1e-4
"""Largest difference from the reference a backend may show on :func:`fixed_case`. Ten times the 1e-5 parity
contract that the test suite holds every backend to: a working backend passes with a wide margin (~1e-6), a broken
one (a wrong term, a missed tile, garbage) is off by O(0.1)."""


class SelfCheck(NamedTuple):
    """Outcome of one backend's self-check on one device."""

    passed: bool
    max_error: float | None  # None when the backend raised
    detail: str  # why it failed ("" when it passed)

    def describe(self) -> str:
        """``self-check passed, max error 3.1e-07`` or ``self-check failed: <why>``."""
        if self.passed:
            return f"self-check passed, max error {self.max_error:.1e}"
        return f"self-check failed: {self.detail}"


def fixed_case(device: torch.device | str = "cpu") -> tuple[Tensor, float, tuple[int, int], float,
                                                              list[tuple[int, int, int, int]]]:
    """(gaussians [320, 9], scale, canvas_hw, dmax, regions): a 4 x 5 LR decoder-like grid rendered x 3.

    Deterministic without a random generator (smooth functions of the index), and made to reach the kernels'
    corner cases: correlations up to +-0.999999, stds from 1e-6 to ~1, means off the canvas, dark and bright
    colours, a window cut (dmax 0.2 on a 12 x 15 canvas) and a region that starts inside the canvas.
    """
    hp, wp, scale = 4, 5, 3.0
    gh, gw = 4 * hp, 4 * wp
    k = torch.arange(gh * gw, dtype=torch.float64)
    row, col = k // gw, k % gw
    raw = torch.stack([
        4.0 * torch.sin(0.7 * k),  # p0: sigma from ~0.02 to ~1
        4.0 * torch.cos(1.3 * k),  # p1
        6.0 * torch.sin(2.1 * k + 0.5),  # rho up to tanh(6): near +-1
        3.0 * torch.cos(0.4 * k),  # alpha
        2.0 * torch.sin(k), 2.0 * torch.cos(1.7 * k), 2.0 * torch.sin(2.9 * k),  # colour
        (col + 0.5 + 0.8 * torch.sin(3.1 * k)) / gw,  # mean_x, up to ~0.8 cells off its centre
        (row + 0.5 + 0.8 * torch.cos(2.3 * k)) / gh,  # mean_y
    ], dim=1).float()
    raw[0, 2], raw[1, 2] = 9.0, -9.0  # rho = +-0.999999
    raw[2, 0:2] = -14.0  # sigma ~ 1e-6
    raw[3, 7:9] = torch.tensor([1.3, -0.2])  # centre off the canvas, still reaching it
    canvas = (math.floor(scale * hp), math.floor(scale * wp))
    regions = [(0, 0, *canvas), (5, 4, 7, 9)]
    return raw.to(device), scale, canvas, 0.2, regions


def run(render: Callable[..., Tensor], device: torch.device) -> SelfCheck:
    """Render :func:`fixed_case` on ``device`` with ``render`` (the backend's function, with the signature of
    :func:`gsasr.render._native.render` less the module) and with the reference, and compare."""
    try:
        raw, scale, canvas, dmax, regions = fixed_case(device)
        error = 0.0
        for region in regions:
            expected = reference.render_gaussians(raw, scale, canvas, dmax=dmax, region=region)
            out = render(raw, scale, canvas, dmax, region)
            if out.shape != expected.shape or out.dtype != torch.float32:
                return SelfCheck(False, None, f"returned {out.dtype} {tuple(out.shape)} instead of float32 "
                                              f"{tuple(expected.shape)}")
            difference = (out.to(expected.device) - expected).abs().max()
            error = max(error, float(difference) if bool(torch.isfinite(difference)) else math.inf)
    except Exception as exc:  # anything the backend raises means it cannot be trusted here
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return SelfCheck(False, None, f"it raised {type(exc).__name__}" + (f": {message}" if message else ""))
    if error > SELF_CHECK_ABS:
        return SelfCheck(False, error, f"max error {error:.1e} against the PyTorch reference (allowed "
                                       f"{SELF_CHECK_ABS:g})")
    return SelfCheck(True, error, "")
