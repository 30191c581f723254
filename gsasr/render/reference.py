"""Reference implementation of `gsasr.render.render_gaussians`: a pure-PyTorch rasteriser.

This file is the specification that the compiled kernels must match. It computes the same function as the
official GSASR CUDA forward kernel (``utils/gs_cuda_dmax/gs.cu`` at upstream commit 9d2eb64, see
``GSASR_SPEC.md`` A.4 and B), with the same float32 / double rounding points, but evaluates it in a different
order: vectorised over (Gaussian, pixel) pairs, in bounded-size chunks, instead of one thread per Gaussian.

The function, for one image, with N Gaussians on a canvas of H x W pixels:

1. **Activations** (float32, as the official PyTorch glue does them; see :func:`gaussian_terms`)::

       sigma_a = 0.99999 * sigmoid(p0) + 1e-6        sigma_b = 0.99999 * sigmoid(p1) + 1e-6
       rho     = 0.999999 * tanh(rho_raw)             colour  = sigmoid(rgb) * sigmoid(alpha_raw)

2. **Conversion to the kernel's units**: align-corners normalised coordinates of the *whole* canvas, in which
   pixel j of an axis of n pixels sits at ``float32(2j / (n - 1) - 1)``::

       cx    = (2 mean_x - 1 + 1 - 1/W) * W / (W - 1) - 1      (likewise cy with H)
       sig_w = sigma_b / step * 2 / (W - 1)                      step = 1.2 / scale
       sig_h = sigma_a / step * 2 / (H - 1)

   [QUIRK] the width-axis std comes from p1 and the height-axis std from p0 (the official code passes its
   "sigma_y" first). In canvas pixels the std is ``sigma * scale / 1.2``.

3. **Per-Gaussian constants** (the kernel's precomputation; the double literals make A, C and D double
   expressions rounded to float)::

       A = float(1.0 / sig_w / sig_w)       B = 2 rho / sig_w / sig_h  (float)
       C = float(1.0 / sig_h / sig_h)       D = float(-0.5 / (1 - rho * rho))   (1 - rho*rho in float)

4. **Pixels**: a Gaussian touches pixel (i, j) only if ``|dx| <= dmax`` and ``|dy| <= dmax``, where
   ``dx = gx_j - cx`` and ``dy = gy_i - cy`` are float32 differences (the official square window, 5 % of the
   canvas at dmax = 0.1, whatever the Gaussian's size). There its weight is, all in float32::

       v = exp(D * ((A dx) dx - (B dx) dy + (C dy) dy))          (unnormalised: the peak is 1)

   and the pixel receives ``v * colour`` (float32 products), summed over Gaussians in float32. No alpha
   compositing, no normalisation, no background.

Three choices of ours, each documented where it is made:

* **k-sigma support** (:data:`SIGMA_CUTOFF`): along x we also drop pixels with ``|dx| > k * sig_w`` (likewise y).
  For any rho, the smallest value of the quadratic form over dy at a given dx is ``dx^2 / sig_w^2``, so every
  dropped weight is below ``exp(-k^2 / 2)`` = 1.3e-14 for k = 8: far below float32 resolution of any pixel sum.
  Concretely the window test becomes ``|dx| <= min(dmax, k * sig_w)`` (float32 radius ``float32(k) * sig_w``,
  see :func:`support_radius`), the same float32 comparison as the official one. ``sigma_cutoff=None`` renders
  the literal dmax window. (The official window is a fixed 5 % of the canvas, far wider than the Gaussians on
  big canvases: this cut is what keeps the cost proportional to the number of Gaussians.)
* **Tiny weights**: weights at or below 1e-37 (float32 subnormals, where exp is very slow on CPUs) are set to 0.
* **1-pixel axes**: the official ``2 / (n - 1)`` divides by zero when an axis has one pixel. There we use pixel
  units on that axis: its pixel sits at 0, ``cx = mean_x * W - 0.5`` (the mean in pixel-index units, so the
  offset from the pixel centre), ``sig_w`` is the std in pixels and the window is ``|dx| <= dmax`` pixels. This is
  the official formula with the factor ``2 / (n - 1)`` replaced by 1, and keeps every value finite.

Anisotropic scales (``scale=(scale_h, scale_w)``, used when an exact output size needs different scales per
axis) use ``step = 1.2 / scale_h`` for sig_h and ``1.2 / scale_w`` for sig_w; an isotropic scale is the official
case. Float inputs of any precision are upcast to float32 before the activations; the official pipeline always
hands float32 to its kernel (``torch.cat`` promotes bf16 decoder heads).

Summation order differs from the official kernel (whose float atomics are unordered anyway), so results agree
with it to float32 rounding of the sums (about 1e-7 relative), not bit for bit.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

SIGMA_CUTOFF: float = 8.0
"""Default k of the k-sigma support: dropped weights are below exp(-k^2/2) = 1.3e-14."""

DEFAULT_DMAX: float = 0.1
"""The official inference window half-width in normalised units (``--dmax``); training used 0.5."""

STEP_NUMERATOR: float = 1.2
"""The official ``default_step_size``: step = 1.2 / scale, so a std of sigma is ``sigma * scale / 1.2`` px."""

DEFAULT_CHUNK_BYTES_CPU: int = 16 * 2**20
"""Temporary memory per chunk on the CPU (8 to 64 MB measured alike on a 2-core CPU; smaller adds overhead)."""

DEFAULT_CHUNK_BYTES_GPU: int = 256 * 2**20
"""Temporary memory per chunk on accelerators, where bigger chunks mean fewer kernel launches."""

BLOCK_GAUSSIANS: int = 1 << 18
"""Gaussians prepared at once: their per-Gaussian temporaries take about 100 MB (~400 bytes each)."""

# Bytes of temporaries per (Gaussian, pixel) pair inside a chunk: the weight (float32), the flat pixel index
# (int64), the three coloured values (float32) and, on the CPU, a complex64 copy of the weight (_Accumulator).
_BYTES_PER_PAIR = 4 + 8 + 3 * 4 + 8
# Bytes of the per-axis terms per (Gaussian, stencil column or row): dx or dy, two derived terms, a mask, and
# the temporaries of their expressions.
_AXIS_BYTES = 24


# exp(-87) = 1.6e-38 is still a normal float32 (the smallest normal is exp(-87.34)); weights at or below
# 1e-37 = exp(-85.2) are flushed to 0 (see _weights).
_EXP_FLOOR: float = -87.0
_WEIGHT_FLOOR: float = 1e-37


class GaussianTerms(NamedTuple):
    """Per-Gaussian values in the kernel's units: everything a rasteriser needs besides the pixel grid.

    All float32, on the device they were computed on, rows in the order of the input Gaussians.
    """

    centre: Tensor  # [N, 2] (cx, cy): the mean in align-corners normalised units of the whole canvas
    sigma: Tensor  # [N, 2] (sig_w, sig_h): std along width and height, same units
    conic: Tensor  # [N, 4] (A, B, C, D): v = exp(D * (A dx^2 - B dx dy + C dy^2)), rounded as the kernel does
    colour: Tensor  # [N, 3] RGB premultiplied by opacity


def scale_pair(scale: float | tuple[float, float]) -> tuple[float, float]:
    """``(scale_h, scale_w)`` from an isotropic scale or a (height, width) pair."""
    if isinstance(scale, (tuple, list)):
        scale_h, scale_w = scale
        return float(scale_h), float(scale_w)
    return float(scale), float(scale)


def grid_width(n: int, canvas_hw: tuple[int, int], scale: float | tuple[float, float]) -> int:
    """Gaussians per grid row: 4 Wp for the padded LR width Wp that fits the canvas, or n (one row) if none does.

    The decoder emits a row-major grid of 4 Hp x 4 Wp Gaussians. The compiled kernels and the strips of
    :func:`gsasr.tiling.render_in_strips` use this guess of the layout only to find candidates quickly; both stay
    exact for any layout (a wrong guess makes them test more candidates).
    """
    scale_h, scale_w = scale_pair(scale)
    canvas_h, canvas_w = canvas_hw
    best, best_cost = n, math.inf
    lr_w = canvas_w / scale_w
    for wp in range(max(1, math.floor(lr_w) - 2), math.ceil(lr_w) + 3):
        if n % (4 * wp) == 0:
            cost = abs(n // (4 * wp) / 4 * scale_h - canvas_h) + abs(wp * scale_w - canvas_w)
            if cost < best_cost:
                best, best_cost = 4 * wp, cost
    return max(best, 1)


def _float64_device(device: torch.device) -> torch.device:
    """Where float64 work can run: Apple's MPS has no float64, so its preparation runs on the CPU."""
    return torch.device("cpu") if device.type == "mps" else device


def kernel_steps(scale: float | tuple[float, float]) -> tuple[float, float]:
    """(step_h, step_w): the official kernel's sigma unit per axis, STEP_NUMERATOR / scale, as Python floats."""
    scale_h, scale_w = scale_pair(scale)
    return STEP_NUMERATOR / scale_h, STEP_NUMERATOR / scale_w


def correlation(g: Tensor) -> Tensor:
    """rho of float32 raw parameters ``g`` [N, 9]: ``0.999999 * tanh(p2)``.

    Its own function because every CPU path must get these exact bits from this exact PyTorch expression (on the
    same, possibly strided, column): D = -0.5 / (1 - rho^2) turns one ulp of rho into percents of a weight when
    |rho| -> 1.
    """
    return 0.999999 * torch.tanh(g[:, 2])


def gaussian_terms(gaussians: Tensor, scale: float | tuple[float, float],
                   canvas_hw: tuple[int, int]) -> GaussianTerms:
    """Activations and unit conversion of raw decoder output, in the official kernel's exact rounding.

    Shared by every backend: the compiled kernels take these terms and only do the window test, the
    exponential and the sums.

    Args:
        gaussians: [N, 9] raw parameters ``[p0, p1, rho, alpha, r, g, b, mean_x, mean_y]`` (any float dtype);
            means in [0, 1] of the padded LR extent, pixel-centre convention, unbounded.
        scale: the upscaling factor, or ``(scale_h, scale_w)``.
        canvas_hw: (H, W) of the whole canvas.

    Returns:
        :class:`GaussianTerms`, float32, on ``gaussians.device`` (MPS: computed on the CPU, then moved).
    """
    device = gaussians.device
    g = gaussians.to(device=_float64_device(device), dtype=torch.float32)
    canvas_h, canvas_w = (int(n) for n in canvas_hw)
    step_h, step_w = kernel_steps(scale)

    # Activations, each a float32 tensor op with a Python-float scalar, in the official order (so the CPU
    # result is bit-identical to the official glue's).
    sigma_a = 0.99999 * torch.sigmoid(g[:, 0]) + 1e-6  # from p0: the HEIGHT axis (official "sigma_x")
    sigma_b = 0.99999 * torch.sigmoid(g[:, 1]) + 1e-6  # from p1: the WIDTH axis (official "sigma_y")
    rho = correlation(g)
    alpha = torch.sigmoid(g[:, 3])
    colour = torch.sigmoid(g[:, 4:7]) * alpha[:, None]

    def to_kernel_units(mean: Tensor, sigma: Tensor, n: int, step: float) -> tuple[Tensor, Tensor]:
        u = mean * 2 - 1  # align_corners=False normalised coordinate of the padded LR extent
        if n > 1:
            # Re-express in align_corners=True units of an n-pixel axis (same expression order as the official).
            centre = (u + 1 - 1 / n) * n / (n - 1) - 1.0
            std = sigma / step * 2 / (n - 1)
        else:
            # 1-pixel axis (our extension, see the module docstring): pixel units, the pixel at 0, so
            # centre = mean * 1 - 0.5 = u / 2.
            centre = u * 0.5
            std = sigma / step
        return centre, std

    cx, sig_w = to_kernel_units(g[:, 7], sigma_b, canvas_w, step_w)
    cy, sig_h = to_kernel_units(g[:, 8], sigma_a, canvas_h, step_h)

    # The kernel's per-Gaussian constants. Its double literals promote A, C and D to double arithmetic, rounded
    # to float on assignment; B is pure float arithmetic; 1 - rho*rho is float before the double division.
    sw64, sh64 = sig_w.double(), sig_h.double()
    a = (1.0 / sw64 / sw64).float()
    b = 2 * rho / sig_w / sig_h
    c = (1.0 / sh64 / sh64).float()
    d = (-0.5 / (1 - rho * rho).double()).float()

    def out(t: Tensor) -> Tensor:
        return t.contiguous().to(device)

    return GaussianTerms(centre=out(torch.stack([cx, cy], dim=1)), sigma=out(torch.stack([sig_w, sig_h], dim=1)),
                         conic=out(torch.stack([a, b, c, d], dim=1)), colour=out(colour))


def pixel_coords(n: int, start: int, length: int, device: torch.device | str = "cpu") -> Tensor:
    """[length] float32 normalised coordinates of pixels ``start .. start+length-1`` of an ``n``-pixel axis.

    ``float32(2.0 * j / (n - 1) - 1.0)`` evaluated in double then rounded, as the kernel does; 0 on a 1-pixel axis.
    """
    if n == 1:
        return torch.zeros(length, dtype=torch.float32, device=device)
    j = torch.arange(start, start + length, dtype=torch.float64)
    return (2.0 * j / (n - 1) - 1.0).float().to(device)


def support_radius(sigma: Tensor, dmax: float, sigma_cutoff: float | None = SIGMA_CUTOFF) -> Tensor:
    """[N, 2] float32 per-axis window half-width: ``min(dmax, k * sigma)`` (just ``dmax`` when k is None).

    A pixel is inside along x when the float32 difference ``gx - cx`` satisfies ``|dx| <= radius_x``: exactly the
    official test when the radius is dmax (both compared in float32; the kernel's dmax is a C++ float).
    """
    dmax32 = torch.tensor(dmax, dtype=torch.float32, device=sigma.device)
    if sigma_cutoff is None:
        return dmax32.expand(sigma.shape).clone()
    return torch.minimum(sigma * float(sigma_cutoff), dmax32)


def _inside(j: Tensor, centre: Tensor, radius: Tensor, n: int) -> Tensor:
    """The window test for pixel indices ``j`` (int64, one per Gaussian) of an ``n``-pixel axis."""
    if n == 1:
        coord = torch.zeros_like(centre)
    else:
        coord = (2.0 * j.double() / (n - 1) - 1.0).float()
    return (coord - centre).abs() <= radius


def _span(centre: Tensor, radius: Tensor, n: int, start: int, length: int) -> tuple[Tensor, Tensor, Tensor]:
    """Exact first and last pixel (int64, within ``start .. start+length-1``) passing the window test, per Gaussian.

    The passing pixels form one interval: ``gx_j`` is non-decreasing in j and float subtraction is monotone. We
    estimate its ends in float64 (error far below a pixel for any canvas below ~10^6 px), take one pixel of margin
    on each side, then settle each end with the float32 test itself. Returns (first, last, nonempty).
    """
    c64, r64 = centre.double(), radius.double()
    if n > 1:
        half = (n - 1) / 2.0
        lo_est, hi_est = (c64 - r64 + 1.0) * half, (c64 + r64 + 1.0) * half
    else:
        lo_est, hi_est = c64 - r64, c64 + r64
    last_px = start + length - 1
    # Clamp in float64 before the integer conversion so centres far outside (or huge radii) cannot overflow.
    lo0 = (torch.ceil(lo_est) - 1).clamp(start, last_px).long()
    hi0 = (torch.floor(hi_est) + 1).clamp(start, last_px).long()
    p0, p1 = _inside(lo0, centre, radius, n), _inside((lo0 + 1).clamp_max(last_px), centre, radius, n)
    q0, q1 = _inside(hi0, centre, radius, n), _inside((hi0 - 1).clamp_min(start), centre, radius, n)
    lo = lo0 + (~p0).long() + (~p0 & ~p1).long()
    hi = hi0 - (~q0).long() - (~q0 & ~q1).long()
    ok = lo <= hi
    lo, hi = torch.where(ok, lo, start), torch.where(ok, hi, start)
    ok &= _inside(lo, centre, radius, n) & _inside(hi, centre, radius, n)
    return lo, hi, ok


def _stencil_sizes(extent: Tensor, limit: int, bits: int) -> Tensor:
    """Round box extents up to a ladder with ``bits`` significant bits (bits = 4: 1..16, then steps of 2, 4, 8 ...,
    at most 6.25 % padding; bits = 2: 1, 2, 3, 4, 6, 8, 12, 16, 24 ..., at most 25 %), so Gaussians share few
    stencil shapes; never more than ``limit`` (the region's size on that axis)."""
    _, exponent = torch.frexp((extent - 1).clamp_min(1).double())  # bit length of (extent - 1)
    step = torch.pow(2, (exponent.long() - bits).clamp_min(0))
    return (((extent + step - 1) // step) * step).clamp_max(limit)


def _ladder_bits(pairs: float) -> int:
    """Fine stencil ladders pad less but make more groups, each costing a few dozen small tensor operations
    (~0.5 ms, the price of ~50 000 pairs). Pick the ladder by the total work: 2 bits below ~3e6 pairs, else 3
    (measured faster than 4 on a 1M-Gaussian render: fewer, fuller groups)."""
    return 2 if pairs < 3e6 else 3


def render_gaussians(gaussians: Tensor, scale: float | tuple[float, float], canvas_hw: tuple[int, int], *,
                     dmax: float = DEFAULT_DMAX, region: tuple[int, int, int, int] | None = None,
                     sigma_cutoff: float | None = SIGMA_CUTOFF, chunk_bytes: int | None = None) -> Tensor:
    """Reference implementation of `gsasr.render.render_gaussians`: render one image's Gaussians.

    Inputs are assumed valid (the public dispatcher checks them).

    Args:
        gaussians: [N, 9] raw decoder output, official order; any float dtype, any device.
        scale: the upscaling factor (or ``(scale_h, scale_w)``).
        canvas_hw: (H, W) of the whole canvas; coordinates and the dmax window refer to it.
        dmax: window half-width in normalised units of the whole canvas.
        region: ``(y0, x0, h, w)`` window of the canvas to render; None renders the whole canvas. The result
            equals the same crop of the full render (up to the order of float32 sums).
        sigma_cutoff: k of the k-sigma support (module docstring), None for the literal dmax window.
        chunk_bytes: bound on the temporaries of one chunk; default depends on the device.

    Returns:
        [3, h, w] float32 on ``gaussians.device``.

    How: Gaussians are taken in blocks of :data:`BLOCK_GAUSSIANS` (so the per-Gaussian preparation is bounded
    too). In a block, every Gaussian gets the exact pixel box of its window inside the region; Gaussians are
    grouped by box size (rounded up to a few stencil shapes), and each group is evaluated in chunks of
    [G, kh, kw] (Gaussian, pixel) pairs whose temporaries stay under ``chunk_bytes``, then scatter-added into the
    image. Python loops run per block, group and chunk only. Memory beyond the output: about 100 MB for the
    block preparation plus twice ``chunk_bytes``, whatever N and the canvas size.
    """
    device = gaussians.device
    canvas_h, canvas_w = (int(n) for n in canvas_hw)
    region = (int(v) for v in region) if region is not None else (0, 0, canvas_h, canvas_w)
    if chunk_bytes is None:
        chunk_bytes = DEFAULT_CHUNK_BYTES_CPU if device.type == "cpu" else DEFAULT_CHUNK_BYTES_GPU
    target = _Target(*region, canvas_h, canvas_w, device)
    workspace = _Workspace(device)
    for lo in range(0, gaussians.shape[0], BLOCK_GAUSSIANS):
        _render_block(target, workspace, gaussians[lo:lo + BLOCK_GAUSSIANS], scale, dmax, sigma_cutoff, chunk_bytes)
    return target.image()


class _Target:
    """The region being rendered: its place in the canvas, its pixel coordinates and its accumulated sums."""

    def __init__(self, y0: int, x0: int, h: int, w: int, canvas_h: int, canvas_w: int, device: torch.device):
        self.y0, self.x0, self.h, self.w = y0, x0, h, w
        self.canvas_h, self.canvas_w = canvas_h, canvas_w
        self.gx = pixel_coords(canvas_w, x0, w, device)  # [w] normalised coordinates of the region's columns
        self.gy = pixel_coords(canvas_h, y0, h, device)  # [h] ... and rows
        self.sums = _Accumulator(h * w, device)

    def image(self) -> Tensor:
        return self.sums.image(self.h, self.w)


class _Workspace:
    """Temporary buffers reused by every chunk (allocating them per chunk costs page faults on the CPU)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pairs = 0

    def reserve(self, pairs: int) -> None:
        if pairs > self.pairs:
            self.pairs = pairs
            self.weight = torch.empty(pairs, dtype=torch.float32, device=self.device)
            self.index = torch.empty(pairs, dtype=torch.int64, device=self.device)
            self.values = torch.empty(3 * pairs, dtype=torch.float32, device=self.device)


def _render_block(target: _Target, workspace: _Workspace, gaussians: Tensor, scale: float | tuple[float, float],
                  dmax: float, sigma_cutoff: float | None, chunk_bytes: int) -> None:
    """Add one block of Gaussians ([B, 9] raw) into ``target``."""
    device, h, w = gaussians.device, target.h, target.w
    # Per-Gaussian preparation, on the CPU for MPS (no float64 there).
    terms = gaussian_terms(gaussians.to(_float64_device(device)), scale, (target.canvas_h, target.canvas_w))
    radius = support_radius(terms.sigma, dmax, sigma_cutoff)
    xlo, xhi, x_ok = _span(terms.centre[:, 0], radius[:, 0], target.canvas_w, target.x0, w)
    ylo, yhi, y_ok = _span(terms.centre[:, 1], radius[:, 1], target.canvas_h, target.y0, h)
    reaches = x_ok & y_ok
    box_w, box_h = xhi - xlo + 1, yhi - ylo + 1
    bits = _ladder_bits(float((box_w * box_h * reaches).sum()))
    kw = _stencil_sizes(box_w, w, bits)
    kh = _stencil_sizes(box_h, h, bits)
    # A stencil that would run past the region's end is shifted back inside; its extra pixels fail the window test.
    start = torch.stack([torch.minimum(xlo, target.x0 + w - kw) - target.x0,
                         torch.minimum(ylo, target.y0 + h - kh) - target.y0], dim=1)  # [B, 2] region-local (x, y)

    # Group by stencil shape; Gaussians that miss the region get key -1, sort first and are dropped. The stable
    # sort keeps the input order (row-major over the Gaussian grid) inside a group, so each chunk of a group
    # writes to a compact part of the image.
    shape_key = torch.where(reaches, kh * (w + 1) + kw, -1)
    order = torch.argsort(shape_key, stable=True)[int((~reaches).sum()):]
    if order.numel() == 0:
        return
    keys, counts = torch.unique_consecutive(shape_key[order], return_counts=True)
    # One gather of everything the chunks need, in group order: [M, 11] floats and [M, 2] stencil origins.
    per_gaussian = torch.cat([terms.centre, radius, terms.conic, terms.colour], dim=1)[order].to(device)
    start = start[order].to(device)

    max_pairs = max(1, chunk_bytes // _BYTES_PER_PAIR)
    first = 0
    for key, count in zip(keys.tolist(), counts.tolist(), strict=True):
        stencil_h, stencil_w = divmod(key, w + 1)
        offsets = ((torch.arange(stencil_h, device=device) * w)[:, None]
                   + torch.arange(stencil_w, device=device)).view(-1)
        per_chunk = max(1, max_pairs // (stencil_h * stencil_w))
        workspace.reserve(min(per_chunk, count) * stencil_h * stencil_w)
        # The per-axis terms are computed for a block of several chunks at once (fewer small operations), the
        # block sized so that they too stay under the memory budget.
        per_block = max(1, chunk_bytes // (_AXIS_BYTES * (stencil_h + stencil_w)) // per_chunk) * per_chunk
        for block_lo in range(first, first + count, per_block):
            block = slice(block_lo, min(block_lo + per_block, first + count))
            params, (sx, sy) = per_gaussian[block], start[block].t()
            terms_x, terms_y = _axis_terms(target.gx, target.gy, stencil_h, stencil_w, sx, sy, params)
            base = sy * w + sx  # flat index of each stencil's top-left pixel in the region
            colour = target.sums.colour_operands(params[:, 8:11])
            for lo in range(0, params.shape[0], per_chunk):
                chunk = slice(lo, lo + per_chunk)
                weight, index = _weights(workspace, [t[chunk] for t in terms_x], [t[chunk] for t in terms_y],
                                         params[chunk, 7:8], base[chunk], offsets)
                target.sums.add(workspace, index, weight, [c[chunk] for c in colour])
        first += count


def _axis_terms(gx: Tensor, gy: Tensor, kh: int, kw: int, sx: Tensor, sy: Tensor,
                params: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """The parts of the quadratic form that depend on one axis only, for G Gaussians on kh x kw stencils.

    Returns ``[(A dx) dx, B dx]`` (each [G, 1, kw]) and ``[dy, (C dy) dy]`` (each [G, kh, 1]), float32, rounded
    as the kernel rounds them. Pixels outside the window get ``+inf`` in the squared term, which makes
    ``D * q = -inf`` and the weight 0; the cross-term factor is zeroed there so that no ``inf - inf`` can arise.
    """
    cx, cy, rx, ry, a, b, c = params[:, :7].t().unsqueeze(2)  # each [G, 1]
    # Row r of gx.unfold(0, kw, 1) is gx[r : r + kw]: picking rows is much faster than fancy 2-D indexing.
    dx = gx.unfold(0, kw, 1).index_select(0, sx) - cx  # [G, kw]
    out_x = dx.abs() > rx
    adx2 = (a * dx * dx).masked_fill_(out_x, float("inf"))
    bdx = (b * dx).masked_fill_(out_x, 0.0)
    dy = gy.unfold(0, kh, 1).index_select(0, sy) - cy  # [G, kh]
    out_y = dy.abs() > ry
    cdy2 = (c * dy * dy).masked_fill_(out_y, float("inf"))
    dy = dy.masked_fill_(out_y, 0.0)
    return [adx2[:, None, :], bdx[:, None, :]], [dy[:, :, None], cdy2[:, :, None]]


def _weights(ws: _Workspace, terms_x: list[Tensor], terms_y: list[Tensor], d: Tensor, base: Tensor,
             offsets: Tensor) -> tuple[Tensor, Tensor]:
    """Weights of G Gaussians on their kh x kw stencils, and the region-local flat index of every stencil pixel.

    With the per-axis terms of :func:`_axis_terms`, the [G, kh, kw] work is four broadcast operations and one
    exp, in the kernel's evaluation order: ``((A dx) dx - (B dx) dy + (C dy) dy) * D``.

    Returns views into the workspace: weight [G*kh*kw] float32 and index [G*kh*kw] int64.
    """
    (adx2, bdx), (dy, cdy2) = terms_x, terms_y
    g, kh, kw = bdx.shape[0], dy.shape[1], bdx.shape[2]
    pairs = g * kh * kw
    v = ws.weight[:pairs].view(g, kh, kw)
    torch.mul(bdx, dy, out=v)  # (B dx) dy
    torch.sub(adx2, v, out=v)  # (A dx) dx - (B dx) dy
    v.add_(cdy2)  # ... + (C dy) dy
    v.mul_(d[:, :, None])
    # exp is 5-60x slower when its result is subnormal or zero (every masked pixel, and the far corners of a
    # stencil). So the argument is clamped where exp is still normal, and weights at or below _WEIGHT_FLOOR
    # (masked pixels included) are then set to exactly 0. The kernel's expf would give such weights as tiny
    # subnormals: at most 1e-37 each, nothing that shows in a float32 sum.
    v.clamp_(min=_EXP_FLOOR)
    v.exp_()
    torch.nn.functional.threshold_(v, _WEIGHT_FLOOR, 0.0)

    index = ws.index[:pairs].view(g, kh * kw)
    torch.add(base[:, None], offsets, out=index)
    return v.view(-1), index.view(-1)


class _Accumulator:
    """The float32 RGB sums of the region's pixels, filled by scatter-adds of ``weight * colour``.

    On the CPU the scatter dominates the cost and costs about the same per element for complex64 as for float32,
    so red and green travel together as one complex64 value (real and imaginary parts add independently: the
    same float32 sums) and blue alone: two scatters per pixel instead of three. ``weight * (r + i g)`` with a real
    weight is ``weight * r + i weight * g`` exactly, the kernel's float32 products.
    """

    def __init__(self, pixels: int, device: torch.device):
        self.packed = device.type == "cpu"
        if self.packed:
            self.rg = torch.zeros(pixels, dtype=torch.complex64, device=device)
            self.b = torch.zeros(pixels, dtype=torch.float32, device=device)
        else:
            self.rgb = torch.zeros(3, pixels, dtype=torch.float32, device=device)

    def colour_operands(self, colour: Tensor) -> list[Tensor]:
        """[G, 3] premultiplied colour -> the per-Gaussian operands of :meth:`add` ([G] each)."""
        if self.packed:
            return [torch.complex(colour[:, 0], colour[:, 1]), colour[:, 2].contiguous()]
        return [colour[:, i].contiguous() for i in range(3)]

    def add(self, ws: _Workspace, index: Tensor, weight: Tensor, colour: list[Tensor]) -> None:
        """Add ``weight * colour`` at ``index``; weight and index are [G * P] (P pixels per Gaussian)."""
        g, n = colour[0].shape[0], weight.numel()
        w = weight.view(g, -1)
        if self.packed:
            # (The real-times-complex product makes one complex temporary of the weights, 8 bytes per pair.)
            rg = torch.view_as_complex(ws.values[: 2 * n].view(g, -1, 2))
            torch.mul(w, colour[0][:, None], out=rg)
            blue = ws.values[2 * n: 3 * n].view(g, -1)
            torch.mul(w, colour[1][:, None], out=blue)
            self.rg.scatter_add_(0, index, rg.view(-1))
            self.b.scatter_add_(0, index, blue.view(-1))
        else:
            values = ws.values[: 3 * n].view(3, g, -1)
            torch.mul(w[None], torch.stack(colour)[:, :, None], out=values)
            for channel in range(3):
                self.rgb[channel].scatter_add_(0, index, values[channel].view(-1))

    def image(self, h: int, w: int) -> Tensor:
        """[3, h, w] float32."""
        if self.packed:
            rg = torch.view_as_real(self.rg)  # [h*w, 2]
            return torch.cat([rg.t(), self.b[None]], dim=0).view(3, h, w)
        return self.rgb.view(3, h, w)
