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

Two choices of ours, both documented where they are made:

* **k-sigma support** (:data:`SIGMA_CUTOFF`): along x we also drop pixels with ``|dx| > k * sig_w`` (likewise y).
  For any rho, the smallest value of the quadratic form over dy at a given dx is ``dx^2 / sig_w^2``, so every
  dropped weight is below ``exp(-k^2 / 2)`` = 1.3e-14 for k = 8: far below float32 resolution of any pixel sum.
  ``sigma_cutoff=None`` renders the literal dmax window.
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
"""Temporary memory per chunk on the CPU. Small enough to stay in the last-level cache (faster than bigger)."""

DEFAULT_CHUNK_BYTES_GPU: int = 256 * 2**20
"""Temporary memory per chunk on accelerators, where bigger chunks mean fewer kernel launches."""

# Bytes of temporaries per (Gaussian, pixel) pair inside a chunk: the weight (float32), the flat pixel index
# (int64) and the three coloured values (float32).
_BYTES_PER_PAIR = 4 + 8 + 3 * 4


# exp(-87) = 1.6e-38 is still a normal float32 (the smallest normal is exp(-87.34)); weights at or below
# 1e-37 = exp(-85.2) are flushed to 0 (see _splat).
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


def _float64_device(device: torch.device) -> torch.device:
    """Where float64 work can run: Apple's MPS has no float64, so its preparation runs on the CPU."""
    return torch.device("cpu") if device.type == "mps" else device


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
    scale_h, scale_w = scale_pair(scale)
    step_h, step_w = STEP_NUMERATOR / scale_h, STEP_NUMERATOR / scale_w

    # Activations, each a float32 tensor op with a Python-float scalar, in the official order (so the CPU
    # result is bit-identical to the official glue's).
    sigma_a = 0.99999 * torch.sigmoid(g[:, 0]) + 1e-6  # from p0: the HEIGHT axis (official "sigma_x")
    sigma_b = 0.99999 * torch.sigmoid(g[:, 1]) + 1e-6  # from p1: the WIDTH axis (official "sigma_y")
    rho = 0.999999 * torch.tanh(g[:, 2])
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


def _stencil_sizes(extent: Tensor, limit: int) -> Tensor:
    """Round box extents up to a short ladder (1..16, then steps of 2, 4, 8, ...: at most 6.25 % padding), so
    Gaussians share a few stencil shapes; never more than ``limit`` (the region's size on that axis)."""
    _, exponent = torch.frexp((extent - 1).clamp_min(1).double())  # bit length of (extent - 1)
    step = torch.pow(2, (exponent.long() - 4).clamp_min(0))
    return (((extent + step - 1) // step) * step).clamp_max(limit)


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
            equals the same crop of the full render (up to float summation order).
        sigma_cutoff: k of the k-sigma support (module docstring), None for the literal dmax window.
        chunk_bytes: bound on the temporary memory of one chunk; default depends on the device.

    Returns:
        [3, h, w] float32 on ``gaussians.device``.
    """
    device = gaussians.device
    canvas_h, canvas_w = (int(n) for n in canvas_hw)
    y0, x0, h, w = (int(v) for v in region) if region is not None else (0, 0, canvas_h, canvas_w)
    canvas = _Accumulator(h * w, device)
    if gaussians.shape[0] == 0 or h == 0 or w == 0:
        return canvas.image(h, w)

    # Per-Gaussian preparation (float64 parts run on the CPU for MPS).
    prep = _float64_device(device)
    terms = gaussian_terms(gaussians.to(prep), scale, (canvas_h, canvas_w))
    radius = support_radius(terms.sigma, dmax, sigma_cutoff)
    xlo, xhi, x_ok = _span(terms.centre[:, 0], radius[:, 0], canvas_w, x0, w)
    ylo, yhi, y_ok = _span(terms.centre[:, 1], radius[:, 1], canvas_h, y0, h)

    # Bucket the Gaussians that reach the region by stencil shape. The stable sort keeps the input order (row-major
    # over the Gaussian grid) inside a bucket, so consecutive Gaussians write to nearby pixels.
    keep = torch.nonzero(x_ok & y_ok).squeeze(1)
    if keep.numel() == 0:
        return canvas.image(h, w)
    xlo, xhi, ylo, yhi = xlo[keep], xhi[keep], ylo[keep], yhi[keep]
    kx = _stencil_sizes(xhi - xlo + 1, w)
    ky = _stencil_sizes(yhi - ylo + 1, h)
    # A stencil that would run past the region's end is shifted back inside; the extra pixels fail the window test.
    sx = torch.minimum(xlo, x0 + w - kx) - x0
    sy = torch.minimum(ylo, y0 + h - ky) - y0
    shape_key = ky * (w + 1) + kx
    order = torch.argsort(shape_key, stable=True)
    keep, sx, sy = keep[order], sx[order], sy[order]
    keys, counts = torch.unique_consecutive(shape_key[order], return_counts=True)
    shapes = torch.stack([keys // (w + 1), keys % (w + 1)], dim=1)

    # Everything the chunks need, in bucket order, on the render device: one row of 8 floats per Gaussian.
    params = torch.cat([terms.centre[keep], radius[keep], terms.conic[keep]], dim=1).to(device)
    colour = canvas.colour_operands(terms.colour[keep].to(device))
    base = (sy * w + sx).to(device)  # flat index of each stencil's top-left pixel in the region
    sx, sy = sx.to(device), sy.to(device)
    gx = pixel_coords(canvas_w, x0, w, device)
    gy = pixel_coords(canvas_h, y0, h, device)

    if chunk_bytes is None:
        chunk_bytes = DEFAULT_CHUNK_BYTES_CPU if device.type == "cpu" else DEFAULT_CHUNK_BYTES_GPU
    max_pairs = max(1, chunk_bytes // _BYTES_PER_PAIR)
    areas = shapes[:, 0] * shapes[:, 1]
    workspace = _Workspace(max(min(max_pairs, int((counts * areas).max())), int(areas.max())), device)

    first = 0
    for (stencil_h, stencil_w), count in zip(shapes.tolist(), counts.tolist()):
        bucket = slice(first, first + count)
        terms_x, terms_y = _axis_terms(gx, gy, stencil_h, stencil_w, sx[bucket], sy[bucket], params[bucket])
        offsets = ((torch.arange(stencil_h, device=device) * w)[:, None]
                   + torch.arange(stencil_w, device=device)).view(-1)
        per_chunk = max(1, max_pairs // (stencil_h * stencil_w))
        for lo in range(0, count, per_chunk):
            sel = slice(lo, min(lo + per_chunk, count))
            weight, index = _weights(workspace, [t[sel] for t in terms_x], [t[sel] for t in terms_y],
                                     params[bucket][sel, 7:8], base[bucket][sel], offsets)
            canvas.add(workspace, index, weight, [c[bucket][sel] for c in colour])
        first += count
    return canvas.image(h, w)


class _Workspace:
    """Temporary buffers reused by every chunk (allocating them per chunk costs page faults on the CPU)."""

    def __init__(self, pairs: int, device: torch.device):
        self.device = device
        self.weight = torch.empty(pairs, dtype=torch.float32, device=device)
        self.index = torch.empty(pairs, dtype=torch.int64, device=device)
        self.values = torch.empty(3 * pairs, dtype=torch.float32, device=device)  # 12 bytes per pair


def _axis_terms(gx: Tensor, gy: Tensor, kh: int, kw: int, sx: Tensor, sy: Tensor,
                params: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """The parts of the quadratic form that depend on one axis only, for G Gaussians on kh x kw stencils.

    Returns ``[(A dx) dx, B dx]`` (each [G, 1, kw]) and ``[dy, (C dy) dy]`` (each [G, kh, 1]), float32, rounded
    as the kernel rounds them. Pixels outside the window get ``+inf`` in the squared term, which makes
    ``D * q = -inf`` and the weight 0; the cross-term factor is zeroed there so that no ``inf - inf`` can arise.
    """
    cx, cy, rx, ry, a, b, c, _ = params.t().unsqueeze(2)  # each [G, 1]
    dx = gx[sx[:, None] + torch.arange(kw, device=gx.device)] - cx  # [G, kw]
    out_x = dx.abs() > rx
    adx2 = (a * dx * dx).masked_fill_(out_x, float("inf"))
    bdx = (b * dx).masked_fill_(out_x, 0.0)
    dy = gy[sy[:, None] + torch.arange(kh, device=gy.device)] - cy  # [G, kh]
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
    so red and green travel together as one complex64 value (real and imaginary parts add independently, so the
    sums are the same float32 sums) and blue alone: two scatters per pixel instead of three. The products
    ``weight * colour`` are the kernel's float32 products either way (a real times a complex multiplies each part).
    """

    def __init__(self, pixels: int, device: torch.device):
        self.packed = device.type == "cpu"
        if self.packed:
            self.rg = torch.zeros(pixels, dtype=torch.complex64, device=device)
            self.b = torch.zeros(pixels, dtype=torch.float32, device=device)
        else:
            self.rgb = torch.zeros(3, pixels, dtype=torch.float32, device=device)

    def colour_operands(self, colour: Tensor) -> list[Tensor]:
        """[N, 3] premultiplied colour -> per-Gaussian operands of :meth:`add` (each indexable by Gaussian)."""
        if self.packed:
            return [torch.complex(colour[:, 0], colour[:, 1]), colour[:, 2].contiguous()]
        return [colour[:, i].contiguous() for i in range(3)]

    def add(self, ws: _Workspace, index: Tensor, weight: Tensor, colour: list[Tensor]) -> None:
        """Add ``weight * colour`` at ``index``; weight and index are [G * P] (P pixels per Gaussian)."""
        g = colour[0].shape[0]
        w = weight.view(g, -1)
        if self.packed:
            rg = torch.view_as_complex(ws.values[: 2 * weight.numel()].view(g, -1, 2))
            torch.mul(w, colour[0][:, None], out=rg)
            blue = ws.values[2 * weight.numel(): 3 * weight.numel()].view(g, -1)
            torch.mul(w, colour[1][:, None], out=blue)
            self.rg.scatter_add_(0, index, rg.view(-1))
            self.b.scatter_add_(0, index, blue.view(-1))
        else:
            values = ws.values[: 3 * weight.numel()].view(3, g, -1)
            torch.mul(w[None], torch.stack(colour)[:, :, None], out=values)
            for channel in range(3):
                self.rgb[channel].scatter_add_(0, index, values[channel].view(-1))

    def image(self, h: int, w: int) -> Tensor:
        """[3, h, w] float32."""
        if self.packed:
            rg = torch.view_as_real(self.rg)  # [h*w, 2]
            return torch.cat([rg.t(), self.b[None]], dim=0).view(3, h, w)
        return self.rgb.view(3, h, w)
