"""Big images: run the networks on LR tiles, but keep one global set of Gaussians and render it in strips.

Why tiles live in Gaussian space (DESIGN.md section 5): the official ``--tile_process`` renders every tile on
its own canvas and pastes SR pixels, so the dmax window shrinks to 5 % of a tile, fractional scales drift tiles
apart, and seams sit where a tile had no context. Here only the encoder and decoder see tiles:

1. The padded LR image is cut into *cores* of ``tile`` x ``tile`` pixels; each core is run with up to
   ``margin`` pixels of real neighbouring context on every side (less at the image border, where the tile simply
   ends like the whole padded image does). All origins and sizes are multiples of the model's window size
   (``denominator``), so every tile's window grid is the global one.
2. Each LR pixel keeps the 16 Gaussians of the tile whose core contains it. A tile's means are in [0, 1] of the
   tile's extent; they are moved to [0, 1] of the whole padded image: ``x = (x_tile * tile_w + tile_x0) / Wp``.
3. The assembled Gaussians, in the same row-major order as an untiled run, are rendered on the whole canvas with
   the whole canvas's dmax window, strip by strip. There is no seam by construction; the result differs from an
   untiled run only through the context a tile loses at its border.

Memory: the automatic tile size comes from the memory available now and a conservative per-architecture cost
per LR pixel (:data:`BYTES_PER_LR_PIXEL`). Allocation failures (CUDA out-of-memory, and CPU allocator failures,
which ComfyUI's own check does not catch) are retried by the caller with halved tiles (:func:`smaller_tile`).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .render import SIGMA_CUTOFF, render_gaussians
from .render.reference import STEP_NUMERATOR, grid_width

GAUSSIANS_PER_LR_PIXEL = 16
PARAMS_PER_GAUSSIAN = 9

CONTEXT_LR_PIXELS = 32
"""Context around a tile's core, in LR pixels (rounded up to the window). The official tiling keeps 8 px of
overlap and cuts its seam 1 LR px from the tile edge; 32 px covers the encoder's convolution stack (EDSR: 34
3x3 convs, radius 34) nearly whole and two decoder windows, so the Gaussians of a core barely feel the cut."""

MIN_TILE_WINDOWS = 2
"""The smallest core the out-of-memory retry goes down to, in windows (denominators)."""

# Peak activation bytes per LR pixel of one tile (encoder + decoder, float32, tile including its context), by
# encoder kind; reduced precision (amp) needs less, and we do not count on it. EDSR is measured with
# bench/tile_memory.py (EDSR + enhanced decoder, CPU peak RSS: 3.4 KiB per LR pixel at the margin, 4.6 KiB/px at
# 324x324 with the fixed per-chunk buffers, since the decoder runs its attention blocks in chunks). 32 KiB is kept
# (~7x) until the accelerators' chunks, 16-32x larger, are measured on a GPU. The others are estimates, not
# measurements: the same decoder plus a wider encoder (RDN keeps 16 block outputs for its fusion, SwinIR and HAT
# run attention and 2x MLPs at 180-192 channels, HAT's overlapping 24x24 windows 2.25x the keys), rounded up.
BYTES_PER_LR_PIXEL: dict[str, int] = {
    "EDSR": 32 * 1024,
    "RDN": 48 * 1024,
    "SwinIR": 48 * 1024,
    "HAT": 96 * 1024,
}
DEFAULT_BYTES_PER_LR_PIXEL = 96 * 1024

MEMORY_FRACTION = {"cuda": 0.7, "cpu": 0.5}
"""Share of the memory available now that one tile may use: the rest is for the Gaussians, the output, the
renderer's chunks and whatever else runs in the process (ComfyUI keeps other models loaded)."""
FALLBACK_AVAILABLE_BYTES = 4 * 2**30  # when the platform cannot tell us (no /proc, no sysconf)

RENDER_STRIP_BYTES = 64 * 2**20
"""Size of one rendered output strip (float32 RGB); the renderer's own temporaries are bounded separately."""

_CPU_OOM_MARKERS = ("defaultcpuallocator", "not enough memory", "can't allocate", "cannot allocate")


@dataclass(frozen=True)
class Tile:
    """One tile: the core it owns and the (larger) extent the networks see, as [y0, y1) x [x0, x1) LR pixels."""
    core: tuple[int, int, int, int]
    extent: tuple[int, int, int, int]


def context_margin(denominator: int) -> int:
    return math.ceil(CONTEXT_LR_PIXELS / denominator) * denominator


def round_tile(tile: int, denominator: int) -> int:
    """A requested core size rounded to a multiple of the window (at least one window)."""
    return max(denominator, round(tile / denominator) * denominator)


def plan_tiles(padded_hw: tuple[int, int], tile: int, margin: int) -> list[Tile]:
    """Cores of ``tile`` pixels (the last ones shorter) covering the padded image, row-major, with context."""
    hp, wp = padded_hw
    tiles = []
    for y0 in range(0, hp, tile):
        y1 = min(y0 + tile, hp)
        for x0 in range(0, wp, tile):
            x1 = min(x0 + tile, wp)
            tiles.append(Tile((y0, y1, x0, x1),
                              (max(y0 - margin, 0), min(y1 + margin, hp), max(x0 - margin, 0), min(x1 + margin, wp))))
    return tiles


def count_tiles(padded_hw: tuple[int, int], tile: int) -> int:
    if tile <= 0:
        return 1
    return math.ceil(padded_hw[0] / tile) * math.ceil(padded_hw[1] / tile)


def smaller_tile(tile: int, padded_hw: tuple[int, int], denominator: int) -> int | None:
    """The core size to retry with after running out of memory, or None when already at the minimum.

    ``tile`` 0 (the whole image) first becomes half the longer padded side."""
    current = tile if tile > 0 else max(padded_hw)
    smallest = MIN_TILE_WINDOWS * denominator
    if current <= smallest:
        return None
    return max(smallest, (current // 2) // denominator * denominator)


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA out-of-memory error, or a CPU allocation failure (a RuntimeError from the allocator)."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, RuntimeError):
        message = str(exc).lower()
        return "out of memory" in message or any(marker in message for marker in _CPU_OOM_MARKERS)
    return False


def free_memory(device: torch.device) -> None:
    """Give cached blocks back after a failed attempt, so the retry can use them."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def available_bytes(device: torch.device) -> int:
    """Memory a new allocation on ``device`` can get now (CUDA: free + cached by PyTorch; else system RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    return _system_available_bytes()  # CPU, and Apple MPS (unified memory)


def _system_available_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return FALLBACK_AVAILABLE_BYTES


def auto_tile(padded_hw: tuple[int, int], out_hw: tuple[int, int], denominator: int, bytes_per_pixel: int,
              available: int, device_type: str) -> int:
    """The largest core (multiple of the window) whose tile fits the budget; 0 when the whole image fits.

    Budget = a share of ``available`` minus what the whole image needs anyway: its Gaussians (float32) and the
    output."""
    hp, wp = padded_hw
    budget = available * MEMORY_FRACTION.get(device_type, MEMORY_FRACTION["cpu"]) - _untiled_bytes(padded_hw, out_hw)
    if hp * wp * bytes_per_pixel <= budget:
        return 0
    margin = context_margin(denominator)
    side = math.sqrt(max(budget, 0) / bytes_per_pixel)
    core = int((side - 2 * margin) // denominator) * denominator
    # Below the minimum the retry loop gets the last word (it raises a clear error if even that fails).
    return max(core, MIN_TILE_WINDOWS * denominator)


def _untiled_bytes(padded_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
    """What an image needs whatever the tiles: its Gaussians (float32) and its output."""
    gaussians = padded_hw[0] * padded_hw[1] * GAUSSIANS_PER_LR_PIXEL * PARAMS_PER_GAUSSIAN * 4
    return gaussians + out_hw[0] * out_hw[1] * 3 * 4


def upscale_work_bytes(in_hw: tuple[int, int], out_hw: tuple[int, int], denominator: int, bytes_per_pixel: int,
                       max_activation_bytes: int) -> int:
    """Memory one image's upscale needs besides the weights, counted as :func:`auto_tile` counts it: the Gaussians
    and the output, plus the networks' activations for the whole image, or ``max_activation_bytes`` when they need
    more (then the image is tiled to what is free). What a host application should free before an upscale."""
    hp, wp = (math.ceil(n / denominator) * denominator for n in in_hw)
    return _untiled_bytes((hp, wp), out_hw) + min(hp * wp * bytes_per_pixel, max_activation_bytes)


def tiled_gaussians(networks: Callable[[torch.Tensor], torch.Tensor], padded: torch.Tensor, tile: int,
                    denominator: int, on_tile: Callable[[], None] | None = None) -> torch.Tensor:
    """Gaussians (16 Hp Wp, 9) of one padded (1, 3, Hp, Wp) image, computed tile by tile, in the untiled order.

    ``networks(x)`` maps a (1, 3, h, w) crop (h, w multiples of the window) to its (1, 16 h w, 9) Gaussians with
    means in [0, 1] of the crop. ``on_tile()`` is called after each tile (progress; raising from it cancels).
    """
    _, _, hp, wp = padded.shape
    g = math.isqrt(GAUSSIANS_PER_LR_PIXEL)  # 4: Gaussians per LR pixel along each axis
    out: torch.Tensor | None = None
    for t in plan_tiles((hp, wp), tile, context_margin(denominator)):
        (cy0, cy1, cx0, cx1), (ey0, ey1, ex0, ex1) = t.core, t.extent
        th, tw = ey1 - ey0, ex1 - ex0
        params = networks(padded[:, :, ey0:ey1, ex0:ex1])[0].reshape(g * th, g * tw, PARAMS_PER_GAUSSIAN)
        core = params[g * (cy0 - ey0):g * (cy1 - ey0), g * (cx0 - ex0):g * (cx1 - ex0)].clone()
        # Tile-relative means -> whole-image means, in float64 so the move adds no rounding of its own.
        mx, my = core[..., 7].double(), core[..., 8].double()
        core[..., 7] = ((mx * tw + ex0) / wp).to(core.dtype)
        core[..., 8] = ((my * th + ey0) / hp).to(core.dtype)
        if out is None:
            out = torch.empty(g * hp, g * wp, PARAMS_PER_GAUSSIAN, dtype=core.dtype, device=core.device)
        out[g * cy0:g * cy1, g * cx0:g * cx1] = core
        del params, core
        if on_tile is not None:
            on_tile()
    assert out is not None
    return out.view(-1, PARAMS_PER_GAUSSIAN)


def render_in_strips(gaussians: torch.Tensor, scale: float | tuple[float, float], canvas_hw: tuple[int, int],
                     out_hw: tuple[int, int], *, dmax: float, backend: str,
                     strip_bytes: int = RENDER_STRIP_BYTES,
                     before_strip: Callable[[], None] | None = None) -> torch.Tensor:
    """The top-left ``out_hw`` of the canvas render, in horizontal strips; each strip gets only the Gaussians
    that can reach it, so the renderer never sees more than it needs.

    A Gaussian reaches at most ``min(dmax (Hc - 1) / 2, SIGMA_CUTOFF * std)`` canvas rows from its centre (the
    official window, and the reference's k-sigma cut); the std in canvas px is at most ``scale / 1.2``. A strip gets
    the whole rows of the Gaussian grid (the decoder's row-major layout, :func:`grid_width`) from the first to the
    last row holding a centre that close: a slice, so the renderers keep the grid layout that makes finding
    candidates fast. (Selecting single Gaussians broke the layout and made the native renderers up to 2x slower.)
    Gaussians that cannot reach the strip change nothing, so one strip equals a whole render exactly.
    ``before_strip()`` is called before each strip (cancel: raising from it stops the render)."""
    oh, ow = out_hw
    ch = canvas_hw[0]
    rows = max(1, strip_bytes // (3 * 4 * ow))
    if before_strip is not None:
        before_strip()
    if rows >= oh:
        return render_gaussians(gaussians, scale, canvas_hw, dmax=dmax, region=(0, 0, oh, ow), backend=backend)
    scale_h = scale[0] if isinstance(scale, tuple) else scale
    reach = min(dmax * (ch - 1) / 2, SIGMA_CUTOFF * scale_h / STEP_NUMERATOR) + 2  # +2: rounding, pixel centres
    centre_y = gaussians[:, 8].float() * ch - 0.5  # canvas row of each centre
    # The comparisons read "not out of reach" so that a NaN centre is kept: render_gaussians then rejects it with a
    # clear error instead of a strip silently dropping it.
    n = gaussians.shape[0]
    grid_w = grid_width(n, canvas_hw, scale) if n else 1
    if grid_w == n:  # no grid layout found (one "row" of all n): select Gaussian by Gaussian

        def reaching(lo: float, hi: float) -> torch.Tensor:
            return gaussians[~((centre_y < lo) | (centre_y > hi))]
    else:
        per_row = centre_y.view(-1, grid_w)
        lowest, highest = per_row.amin(dim=1).cpu(), per_row.amax(dim=1).cpu()

        def reaching(lo: float, hi: float) -> torch.Tensor:
            rows_in_reach = (~((highest < lo) | (lowest > hi))).nonzero()
            if rows_in_reach.numel() == 0:
                return gaussians[:0]
            return gaussians[int(rows_in_reach[0]) * grid_w:(int(rows_in_reach[-1]) + 1) * grid_w]

    out = torch.empty(3, oh, ow, dtype=torch.float32, device=gaussians.device)
    for y0 in range(0, oh, rows):
        if before_strip is not None and y0 > 0:
            before_strip()
        h = min(rows, oh - y0)
        out[:, y0:y0 + h] = render_gaussians(reaching(y0 - reach, y0 + h - 1 + reach), scale, canvas_hw, dmax=dmax,
                                             region=(y0, 0, h, ow), backend=backend)
    return out
