"""The compiled rasteriser (``cuda/``, built by ``install.py``): finding it, and preparing its inputs.

Only :mod:`gsasr.render` imports this file, and only when a compiled backend is first considered. :func:`load`
imports the already-built module from the build folder of :mod:`gsasr.render._build`; it compiles nothing unless
``GSASR_JIT=1`` asks for it (a build takes a minute or more, which must never happen silently mid-run).

:func:`render` splits the work the way the kernels expect (``cuda/gsasr_math.h``):

1. per-Gaussian terms in PyTorch, by :func:`gsasr.render.reference.gaussian_terms` (the activations every
   backend shares), plus the support radius ``min(dmax, k sigma)`` with k = :data:`NATIVE_SIGMA_CUTOFF`;
2. ``ext.boxes``: each Gaussian's exact pixel box in the region (the official float32 window test);
3. the tile ranges: GSASR's Gaussians are a row-major grid (4 x 4 per LR pixel), so the Gaussians that reach an
   output tile are found in a rectangle of that grid. Per grid column (and row) we take the union of its
   Gaussians' boxes from the actual boxes, and give each tile the first..last grid column (row) whose union
   meets it. Every Gaussian that reaches a tile lies in that rectangle whatever its offset, so the result is
   exact for any input; the grid layout only decides how few candidates each tile has to test;
4. ``ext.render``: the gather kernel. On CUDA, ``GSASR_CUDA_GATHER=compact`` picks ``ext.render_compact``
   instead: the same result bit for bit, each tile walking only the candidates whose box meets it
   (cuda/render_cuda.cu); :data:`CUDA_GATHERS` lists the choices, the first being the default.

On the CPU, step 1 is one fused C++ pass (``ext.terms``, bit-identical to the PyTorch ops) and
:func:`render_cpu` hands the terms to ``ext.render_terms``, which does steps 2-4 in one C++ pass and also cuts each
box to the Gaussian's k-sigma ellipse (cuda/render_cpu.cpp).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

import torch
from torch import Tensor

from ..errors import InvalidInputError
from . import _build
from .reference import GaussianTerms, correlation, gaussian_terms, grid_width, kernel_steps, support_radius

JIT_ENV_VAR = "GSASR_JIT"
CUDA_GATHER_ENV_VAR = "GSASR_CUDA_GATHER"
CUDA_GATHERS = ("scan", "compact")

NATIVE_SIGMA_CUTOFF: float = 6.0
"""k of the compiled kernels' k-sigma support. Any contribution (weight x colour) they drop is below
exp(-k^2/2) = 1.5e-8 (the smallest value of the quadratic form at |dx| = k sig_w is k^2; the CPU kernel shrinks
the ellipse of a dark Gaussian so that the product keeps that bound), against exp(-32) for the reference's k = 8;
summed over the Gaussians that can reach a pixel that stays near 1e-6, below the 1e-5 parity contract, and the
boxes have ~45 % fewer pixels."""

TILE = {"cpu": 32, "cuda": 16}
"""Tile side that ``ext.render`` expects its ranges for (cuda/render_cpu.cpp kTile, cuda/render_cuda.cu kTileCuda);
the CPU fast path (``ext.render_terms``) picks its own tiles."""


class NativeUnavailable(Exception):
    """The compiled module cannot be used; the message says why and what to do."""


def _import(path) -> ModuleType:
    if _build.NAME in sys.modules:  # already imported in this process (e.g. built by GSASR_JIT)
        return sys.modules[_build.NAME]
    spec = importlib.util.spec_from_file_location(_build.NAME, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[_build.NAME] = module
    return module


def load() -> ModuleType:
    """The compiled module: the CUDA build when PyTorch has CUDA and it was built, else the CPU build.

    Raises:
        NativeUnavailable: not built (and ``GSASR_JIT`` is not 1), or built for another torch and failing to load.
    """
    choices = (True, False) if _build.torch_cuda_version() is not None else (False,)
    for with_cuda in choices:
        path = _build.library_path(with_cuda)
        if path.is_file():
            try:
                return _import(path)
            except (ImportError, OSError) as exc:
                raise NativeUnavailable(f"the native rasteriser at {path} failed to load ({exc}); rebuild it "
                                        f"with `python install.py`") from exc
    if os.environ.get(JIT_ENV_VAR, "").strip() == "1":
        try:
            return _build.build(with_cuda=_build.cuda_reason() is None)
        except Exception as exc:  # a compiler error: report it as the backend's reason
            raise NativeUnavailable(f"building the native rasteriser ({JIT_ENV_VAR}=1) failed: {exc}") from exc
    raise NativeUnavailable("the native rasteriser is not built; run `python install.py` in the ComfyUI-GSASR "
                            f"folder (or set {JIT_ENV_VAR}=1 to build it on first use)")


def tile_ranges(first: Tensor, last: Tensor, length: int, tile: int) -> Tensor:
    """[tiles, 2] int64: per tile of an axis of ``length`` pixels, the first and last grid line (column or row)
    whose pixel union ``[first, last]`` (per line, empty when first > last) meets the tile; (1, 0) when none."""
    starts = torch.arange(0, length, tile, device=first.device)
    ends = (starts + tile - 1).clamp_max(length - 1)
    hit = (first[None, :] <= ends[:, None]) & (last[None, :] >= starts[:, None]) & (first <= last)[None, :]
    lines = hit.shape[1]
    any_hit = hit.any(dim=1)
    lo = hit.to(torch.uint8).argmax(dim=1)
    hi = lines - 1 - hit.flip(1).to(torch.uint8).argmax(dim=1)
    lo = torch.where(any_hit, lo, torch.ones_like(lo))
    hi = torch.where(any_hit, hi, torch.zeros_like(hi))
    return torch.stack([lo, hi], dim=1).long().contiguous()


def grid_tile_ranges(boxes: Tensor, grid_w: int, region_hw: tuple[int, int],
                     tile_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(cols [tiles_x, 2], rows [tiles_y, 2]) int64: per tile column (row) of the region, the first and last column
    (row) of the Gaussian grid (row-major, ``grid_w`` per row) whose boxes' union meets it (step 3 above).

    ``boxes`` [N, 4] are region-local inclusive (x0, x1, y0, y1), empty where x0 > x1.
    """
    h, w = region_hw
    tile_h, tile_w = tile_hw
    empty = boxes[:, 0] > boxes[:, 1]
    big = torch.iinfo(torch.int32).max
    lo_x = boxes[:, 0].masked_fill(empty, big).view(-1, grid_w)
    hi_x = boxes[:, 1].masked_fill(empty, -1).view(-1, grid_w)
    lo_y = boxes[:, 2].masked_fill(empty, big).view(-1, grid_w)
    hi_y = boxes[:, 3].masked_fill(empty, -1).view(-1, grid_w)
    return (tile_ranges(lo_x.amin(dim=0), hi_x.amax(dim=0), w, tile_w),
            tile_ranges(lo_y.amin(dim=1), hi_y.amax(dim=1), h, tile_h))


def render(ext: ModuleType, gaussians: Tensor, scale: float | tuple[float, float], canvas_hw: tuple[int, int],
           dmax: float, region: tuple[int, int, int, int]) -> Tensor:
    """Render with the compiled kernels; same contract as :func:`gsasr.render.render_gaussians` (inputs checked)."""
    y0, x0, h, w = region
    if gaussians.shape[0] == 0:
        return torch.zeros(3, h, w, dtype=torch.float32, device=gaussians.device)
    if gaussians.device.type == "cpu":
        return render_cpu(ext, gaussians, scale, canvas_hw, dmax, region)
    return render_with_ranges(ext, gaussians, scale, canvas_hw, dmax, region)


def render_cpu(ext: ModuleType, gaussians: Tensor, scale: float | tuple[float, float], canvas_hw: tuple[int, int],
               dmax: float, region: tuple[int, int, int, int]) -> Tensor:
    """The CPU path: ``ext.render_terms`` finds boxes, k-sigma ellipses and tile ranges itself, from the terms."""
    terms = cpu_terms(ext, gaussians, scale, canvas_hw)
    grid_w = grid_width(gaussians.shape[0], canvas_hw, scale)
    return ext.render_terms(terms.centre, terms.sigma, terms.conic, terms.colour, float(dmax), NATIVE_SIGMA_CUTOFF,
                            grid_w, *canvas_hw, *region)


def cpu_terms(ext: ModuleType, gaussians: Tensor, scale: float | tuple[float, float],
              canvas_hw: tuple[int, int]) -> GaussianTerms:
    """:func:`gaussian_terms` of CPU Gaussians, bit for bit, with the fused ``ext.terms`` pass (cuda/terms_cpu.cpp)
    where this build has it; a build from before it falls back to the PyTorch ops."""
    g = gaussians.to(torch.float32)  # the reference's g: rho must come from the same (maybe strided) column
    # PyTorch evaluates the reference's sigmoids on strided columns with its scalar formula, which ext.terms
    # repeats; on a column-major g (columns of stride 1) it would use its vectorised exp instead, whose last bits
    # differ. Decoder output is row-major, so that layout only reaches the PyTorch path.
    if not hasattr(ext, "terms") or (g.shape[0] > 1 and g.stride(0) == 1):
        return gaussian_terms(gaussians, scale, canvas_hw)
    rho = correlation(g).contiguous()
    canvas_h, canvas_w = (int(n) for n in canvas_hw)
    return GaussianTerms(*ext.terms(g.contiguous(), rho, *kernel_steps(scale), canvas_h, canvas_w))


def render_with_ranges(ext: ModuleType, gaussians: Tensor, scale: float | tuple[float, float],
                       canvas_hw: tuple[int, int], dmax: float, region: tuple[int, int, int, int]) -> Tensor:
    """The generic path (steps 1-4 of the module docstring): used for CUDA, and valid on the CPU too."""
    canvas_h, canvas_w = canvas_hw
    y0, x0, h, w = region
    terms = gaussian_terms(gaussians, scale, canvas_hw)  # float32 (fp16/bf16 upcast), on the Gaussians' device
    radius = support_radius(terms.sigma, dmax, NATIVE_SIGMA_CUTOFF)
    params = torch.cat([terms.centre, radius, terms.conic, terms.colour], dim=1).contiguous()
    boxes = ext.boxes(params, canvas_h, canvas_w, y0, x0, h, w)

    grid_w = grid_width(gaussians.shape[0], canvas_hw, scale)
    tile = TILE["cuda" if gaussians.device.type == "cuda" else "cpu"]
    cols, rows = grid_tile_ranges(boxes, grid_w, (h, w), (tile, tile))
    kernel = ext.render_compact if gaussians.device.type == "cuda" and cuda_gather() == "compact" else ext.render
    return kernel(params, boxes, cols, rows, grid_w, tile, canvas_h, canvas_w, y0, x0, h, w)


def cuda_gather() -> str:
    """The CUDA gather kernel ``GSASR_CUDA_GATHER`` asks for (read at each render), default the first of
    :data:`CUDA_GATHERS`."""
    name = os.environ.get(CUDA_GATHER_ENV_VAR, CUDA_GATHERS[0]).strip().lower() or CUDA_GATHERS[0]
    if name not in CUDA_GATHERS:
        raise InvalidInputError(f"{CUDA_GATHER_ENV_VAR}={os.environ[CUDA_GATHER_ENV_VAR]!r} is not one of "
                                f"{', '.join(CUDA_GATHERS)}; fix or unset it.")
    return name
