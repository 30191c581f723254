"""The ``triton`` rasteriser backend: a Triton gather kernel, compiled at run time, no C++ toolchain needed.

Only :mod:`gsasr.render` imports this file, and only when the backend is first considered; ``triton`` itself is
imported on that first need (it is optional: not in requirements.txt), the kernel (:mod:`._triton_kernel`) on the
first render.

Two modes, fixed for the process when the kernel is first imported (``@triton.jit`` reads ``TRITON_INTERPRET``
as it decorates):

* compiled (the default): renders Gaussians on a GPU that PyTorch and Triton share (``cuda``: NVIDIA and AMD
  ROCm; ``xpu``: Intel);
* interpreted (``TRITON_INTERPRET=1``): Triton's interpreter runs the same kernel with NumPy on CPU tensors. Far
  too slow to use, it is how the kernel is tested on machines without a GPU (CI).

:func:`render` prepares what the kernel reads, as :mod:`gsasr.render._native` does for the CUDA kernel: the
per-Gaussian terms (:func:`gsasr.render.reference.gaussian_terms`) and support radius (k =
:data:`~gsasr.render._native.NATIVE_SIGMA_CUTOFF`), each Gaussian's pixel box (a first small Triton kernel, one
pass over the Gaussians), and per tile the rectangle of the Gaussian grid whose boxes can reach it.
"""
from __future__ import annotations

import contextlib
import os
import sys
from types import ModuleType
from typing import NamedTuple

import torch
from torch import Tensor

from ..errors import InvalidInputError
from . import _native
from .reference import gaussian_terms, grid_width, pixel_coords, support_radius

INTERPRET_ENV_VAR = "TRITON_INTERPRET"
BLOCK_ENV_VAR = "GSASR_TRITON_BLOCK"
GPU_DEVICE_TYPES = ("cuda", "xpu")


class Launch(NamedTuple):
    """How the kernel is launched: tile size, candidates per step, warps per program."""

    tile_h: int
    tile_w: int
    block: int
    num_warps: int


LAUNCH = {
    # 16 x 16 tiles as the CUDA kernel's; 4 candidates per step keep each [block, 16, 16] temporary at 8
    # registers per thread (4 warps). GSASR_TRITON_BLOCK overrides the block for measurements.
    "compiled": Launch(16, 16, 4, 4),
    # The interpreter pays per operation, not per element: big tiles and blocks make few, large NumPy operations.
    "interpreted": Launch(32, 32, 128, 1),
}

# (triton module, None) once imported, (None, reason) once that failed; None before the first try.
_triton_cache: tuple[ModuleType | None, str | None] | None = None


def _triton() -> tuple[ModuleType | None, str | None]:
    global _triton_cache
    if _triton_cache is None:
        try:
            import triton
        except ImportError:
            _triton_cache = (None, "triton is not installed (`pip install triton`, or `triton-windows` on Windows; "
                                   "it comes with PyTorch's CUDA wheels on Linux)")
        except Exception as exc:  # a broken install can fail in many ways; report it as the reason
            _triton_cache = (None, f"triton failed to import ({type(exc).__name__}: {exc})")
        else:
            _triton_cache = (triton, None)
    return _triton_cache


def interpreted() -> bool:
    """Whether the kernel runs (or, not yet imported, would run) in Triton's interpreter on CPU tensors."""
    loaded = sys.modules.get(__package__ + "._triton_kernel")
    if loaded is not None:
        return bool(loaded.INTERPRETED)
    triton, _ = _triton()
    return triton is not None and bool(triton.knobs.runtime.interpret)


def unavailable_reason() -> str | None:
    """None when the backend can render in this process, else why not."""
    triton, reason = _triton()
    if triton is None:
        return reason
    if interpreted() or device() is not None:
        return None
    return (f"PyTorch sees no GPU for Triton to compile for (CUDA, ROCm or XPU); {INTERPRET_ENV_VAR}=1 runs its "
            f"interpreter on CPU tensors instead (slow, for tests)")


def device() -> torch.device | None:
    """The device whose tensors this backend renders: the CPU when interpreted, else the current GPU, if any."""
    if interpreted():
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return torch.device("xpu", xpu.current_device())
    return None


def serves(target: torch.device) -> bool:
    """Whether tensors on ``target`` can be rendered by this backend in its mode."""
    return target.type == "cpu" if interpreted() else target.type in GPU_DEVICE_TYPES


def kernel() -> ModuleType:
    """The kernel module (imported on first use; importing it decorates, and so fixes the mode)."""
    from . import _triton_kernel

    return _triton_kernel


def launch_config() -> Launch:
    """The launch of the current mode, with the block of ``GSASR_TRITON_BLOCK`` if set (read at each render)."""
    config = LAUNCH["interpreted" if interpreted() else "compiled"]
    value = os.environ.get(BLOCK_ENV_VAR, "").strip()
    if value:
        if not value.isdigit() or int(value) not in (1, 2, 4, 8, 16, 32, 64):
            raise InvalidInputError(f"{BLOCK_ENV_VAR}={os.environ[BLOCK_ENV_VAR]!r} must be a power of two from 1 "
                                    f"to 64 (Gaussians per kernel step); fix or unset it.")
        config = config._replace(block=int(value))
    return config


def _on(device: torch.device):
    """Launch on ``device`` (Triton launches on the current CUDA device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def window_boxes(params: Tensor, canvas_hw: tuple[int, int], region: tuple[int, int, int, int]) -> Tensor:
    """[N, 4] int32 region-local inclusive pixel boxes (x0, x1, y0, y1) around the pixels each Gaussian's window
    reaches (a superset, at most 2 pixels wider per side; the kernel tests every pixel exactly), (1, 0, 1, 0) for a
    Gaussian that cannot reach the region. ``params`` are the kernel's [N, 11] rows."""
    canvas_h, canvas_w = canvas_hw
    y0, x0, h, w = region
    n = params.shape[0]
    boxes = torch.empty(n, 4, dtype=torch.int32, device=params.device)
    block = 1024  # Gaussians per program of this memory-bound pass
    with _on(params.device):
        kernel().window_boxes[(-(-n // block),)](params, boxes, n, canvas_h, canvas_w, y0, x0, h, w, BLOCK=block,
                                                 enable_fp_fusion=False)
    return boxes


def render(gaussians: Tensor, scale: float | tuple[float, float], canvas_hw: tuple[int, int], dmax: float,
           region: tuple[int, int, int, int]) -> Tensor:
    """Render with the Triton kernel; same contract as :func:`gsasr.render.render_gaussians` (inputs checked, the
    Gaussians on a device this backend :func:`serves`)."""
    y0, x0, h, w = region
    target = gaussians.device
    if gaussians.shape[0] == 0:
        return torch.zeros(3, h, w, dtype=torch.float32, device=target)
    module = kernel()
    config = launch_config()
    terms = gaussian_terms(gaussians, scale, canvas_hw)  # float32 (fp16/bf16 upcast) on the Gaussians' device
    radius = support_radius(terms.sigma, dmax, _native.NATIVE_SIGMA_CUTOFF)
    params = torch.cat([terms.centre, radius, terms.conic, terms.colour], dim=1).contiguous()
    boxes = window_boxes(params, canvas_hw, region)
    grid_w = grid_width(gaussians.shape[0], canvas_hw, scale)
    cols, rows = _native.grid_tile_ranges(boxes, grid_w, (h, w), (config.tile_h, config.tile_w))
    canvas_h, canvas_w = canvas_hw
    gx = pixel_coords(canvas_w, x0, w, target)
    gy = pixel_coords(canvas_h, y0, h, target)
    out = torch.empty(3, h, w, dtype=torch.float32, device=target)  # the tiles cover it, each pixel written once
    grid = (cols.shape[0], rows.shape[0])
    with _on(target):
        module.render_tiles[grid](params, boxes, cols, rows, gx, gy, out, grid_w, h, w,
                                  TILE_H=config.tile_h, TILE_W=config.tile_w, BLOCK=config.block,
                                  num_warps=config.num_warps, enable_fp_fusion=False)
    return out
