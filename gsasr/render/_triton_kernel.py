"""The Triton gather kernel of the ``triton`` rasteriser backend (host side: :mod:`gsasr.render._triton`).

Imported only by :func:`gsasr.render._triton.kernel`, on the first triton render: ``@triton.jit`` reads
``TRITON_INTERPRET`` when it decorates the kernel (triton 3.x ``knobs.runtime.interpret``), so the mode, compiled
for a GPU or interpreted on the CPU, is fixed by the environment at that first import, for the whole process.

Two kernels. ``window_boxes``: one pass over the Gaussians, each one's pixel box in the region (a superset of the
pixels its window reaches). ``render_tiles``, the gather of cuda/render_cpu.cpp and cuda/render_cuda.cu: one
program per output tile, which walks the Gaussians of its rectangle of the Gaussian grid (the host picks it from
the boxes, so no Gaussian that reaches the tile is missed), keeps the tile's float32 sums in registers and writes
each pixel once: no atomics, and the order of the sums is fixed. The rectangle is walked ``BLOCK`` candidates at a
time (row-major); a block whose boxes all miss the tile is skipped before any of its terms are loaded. Every pixel
of a tile then gets the exact window test, so the boxes only need to hold the window.

The arithmetic is the reference's (gsasr/render/reference.py), term for term: the float32 window test
``|gx - cx| <= radius`` per axis, ``((A dx) dx - (B dx) dy + (C dy) dy) * D`` in that order (launched with
``enable_fp_fusion=False``: a fused multiply-add changes the weight when |rho| -> 1, see cuda/gsasr_math.h), the
exponent clamped at -87 and weights at or below 1e-37 set to 0. The per-Gaussian terms (conic, colour, support
radius) are computed once per Gaussian on the host by :func:`gsasr.render.reference.gaussian_terms`.
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import reference

INTERPRETED = bool(triton.knobs.runtime.interpret)
"""The mode ``@triton.jit`` decorated the kernel in below (it reads the same knob)."""

# A jit function may read only constexpr globals. The reference's exponent floor and weight flush:
EXP_FLOOR = tl.constexpr(reference._EXP_FLOOR)
WEIGHT_FLOOR = tl.constexpr(reference._WEIGHT_FLOOR)
# Columns of the [N, 11] parameter rows (the order of cuda/gsasr_math.h's Param, built by _triton.render).
CX, CY, RX, RY, A, B, C, D, RED, GREEN, BLUE, PARAMS = (tl.constexpr(k) for k in range(12))


@triton.jit
def _axis_box(centre, radius, n, start, length):
    """Region-local (first, last) pixel that may pass the window test ``|coord_j - centre| <= radius`` on an axis of
    n pixels (coord_j = 2j/(n-1) - 1; 0 on a 1-pixel axis), first > last when none can. A superset, not the exact
    span: the float64 estimate is widened by a pixel on each side, which covers the float32 rounding of the
    reference's test (~1e-7 of the canvas); the kernel then applies the exact test to every pixel."""
    c = centre.to(tl.float64)
    r = radius.to(tl.float64)
    half = tl.where(n > 1, (n - 1) / 2.0, 1.0).to(tl.float64)
    shift = tl.where(n > 1, 1.0, 0.0).to(tl.float64)
    lo = tl.floor((c - r + shift) * half - start) - 1.0
    hi = tl.ceil((c + r + shift) * half - start) + 1.0
    empty = (hi < 0.0) | (lo > length - 1.0)
    first = tl.minimum(tl.maximum(lo, 0.0), length - 1.0).to(tl.int32)
    last = tl.minimum(tl.maximum(hi, 0.0), length - 1.0).to(tl.int32)
    return tl.where(empty, 1, first), tl.where(empty, 0, last)


@triton.jit(do_not_specialize=["n", "canvas_h", "canvas_w", "y0", "x0", "h", "w"])
def window_boxes(params_ptr, boxes_ptr, n, canvas_h, canvas_w, y0, x0, h, w, BLOCK: tl.constexpr):
    """boxes [N, 4] int32: each Gaussian's region-local inclusive pixel box (x0, x1, y0, y1), a superset of the pixels
    its window reaches (see _axis_box); (1, 0, 1, 0) when it cannot reach the region."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n
    p = params_ptr + PARAMS * i.to(tl.int64)
    xa, xb = _axis_box(tl.load(p + CX, mask=ok, other=0.0), tl.load(p + RX, mask=ok, other=0.0), canvas_w, x0, w)
    ya, yb = _axis_box(tl.load(p + CY, mask=ok, other=0.0), tl.load(p + RY, mask=ok, other=0.0), canvas_h, y0, h)
    empty = (xa > xb) | (ya > yb)
    box = boxes_ptr + 4 * i.to(tl.int64)
    tl.store(box, tl.where(empty, 1, xa), mask=ok)
    tl.store(box + 1, tl.where(empty, 0, xb), mask=ok)
    tl.store(box + 2, tl.where(empty, 1, ya), mask=ok)
    tl.store(box + 3, tl.where(empty, 0, yb), mask=ok)


@triton.jit(do_not_specialize=["grid_w", "h", "w"])
def render_tiles(params_ptr, boxes_ptr, cols_ptr, rows_ptr, gx_ptr, gy_ptr, out_ptr, grid_w, h, w,
                 TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK: tl.constexpr):
    """Program (tx, ty) renders pixels [ty TILE_H, +TILE_H) x [tx TILE_W, +TILE_W) of the region into out [3, h, w].

    params [N, 11] float32 (cx, cy, rx, ry, A, B, C, D, r, g, b); boxes [N, 4] int32 (window_boxes), empty when
    x0 > x1; cols [tiles_x, 2] / rows [tiles_y, 2] int64 first and last grid column
    and row of each tile's candidates (first > last: none); gx [w], gy [h] float32 pixel coordinates.
    """
    tx = tl.program_id(0)
    ty = tl.program_id(1)
    tile_x0 = tx * TILE_W
    tile_y0 = ty * TILE_H
    tile_x1 = tl.minimum(tile_x0 + TILE_W, w) - 1
    tile_y1 = tl.minimum(tile_y0 + TILE_H, h) - 1
    xs = tile_x0 + tl.arange(0, TILE_W)
    ys = tile_y0 + tl.arange(0, TILE_H)
    gx = tl.load(gx_ptr + xs, mask=xs < w, other=0.0)
    gy = tl.load(gy_ptr + ys, mask=ys < h, other=0.0)
    col_first = tl.load(cols_ptr + 2 * tx)
    col_last = tl.load(cols_ptr + 2 * tx + 1)
    row_first = tl.load(rows_ptr + 2 * ty)
    row_last = tl.load(rows_ptr + 2 * ty + 1)

    red = tl.zeros([TILE_H, TILE_W], dtype=tl.float32)
    green = tl.zeros([TILE_H, TILE_W], dtype=tl.float32)
    blue = tl.zeros([TILE_H, TILE_W], dtype=tl.float32)
    # The candidates: the rectangle rows x cols of the grid, flattened row-major and taken BLOCK at a time.
    ncols = tl.maximum(col_last - col_first + 1, 0)
    count = tl.maximum(row_last - row_first + 1, 0) * ncols
    for k0 in range(0, count, BLOCK):
        k = k0 + tl.arange(0, BLOCK)
        valid = k < count
        i = (row_first + k // ncols) * grid_w + col_first + k % ncols
        box = boxes_ptr + 4 * i
        hit = (valid & (tl.load(box, mask=valid, other=1) <= tile_x1)
               & (tl.load(box + 1, mask=valid, other=0) >= tile_x0)
               & (tl.load(box + 2, mask=valid, other=1) <= tile_y1)
               & (tl.load(box + 3, mask=valid, other=0) >= tile_y0))
        if tl.max(hit.to(tl.int32), axis=0) > 0:
            p = params_ptr + PARAMS * i
            cx = tl.load(p + CX, mask=hit, other=0.0)
            cy = tl.load(p + CY, mask=hit, other=0.0)
            rx = tl.load(p + RX, mask=hit, other=0.0)
            ry = tl.load(p + RY, mask=hit, other=0.0)
            a = tl.load(p + A, mask=hit, other=0.0)
            b = tl.load(p + B, mask=hit, other=0.0)
            c = tl.load(p + C, mask=hit, other=0.0)
            d = tl.load(p + D, mask=hit, other=0.0)
            # Per-axis terms, [BLOCK, TILE_W] and [BLOCK, TILE_H], rounded as the reference rounds them.
            dx = gx[None, :] - cx[:, None]
            in_x = (tl.abs(dx) <= rx[:, None]) & hit[:, None]
            adx2 = (a[:, None] * dx) * dx
            bdx = b[:, None] * dx
            dy = gy[None, :] - cy[:, None]
            in_y = tl.abs(dy) <= ry[:, None]
            cdy2 = (c[:, None] * dy) * dy
            # [BLOCK, TILE_H, TILE_W]: ((A dx) dx - (B dx) dy + (C dy) dy) * D, clamped, exponentiated.
            q = (adx2[:, None, :] - bdx[:, None, :] * dy[:, :, None]) + cdy2[:, :, None]
            v = tl.exp(tl.maximum(q * d[:, None, None], EXP_FLOOR))
            keep = in_x[:, None, :] & in_y[:, :, None] & (v > WEIGHT_FLOOR)
            v = tl.where(keep, v, 0.0)
            red += tl.sum(v * tl.load(p + RED, mask=hit, other=0.0)[:, None, None], axis=0)
            green += tl.sum(v * tl.load(p + GREEN, mask=hit, other=0.0)[:, None, None], axis=0)
            blue += tl.sum(v * tl.load(p + BLUE, mask=hit, other=0.0)[:, None, None], axis=0)

    offsets = ys[:, None] * w + xs[None, :]
    inside = (ys[:, None] < h) & (xs[None, :] < w)
    plane = h * w
    tl.store(out_ptr + offsets, red, mask=inside)
    tl.store(out_ptr + plane + offsets, green, mask=inside)
    tl.store(out_ptr + 2 * plane + offsets, blue, mask=inside)
