"""Rendering GSASR Gaussians into an image: the one dispatch point (checks, dtype policy, backend choice).

Backends:

* ``"torch"``: :mod:`gsasr.render.reference`, pure PyTorch, any device; the specification.
* ``"cpu"`` and ``"cuda"``: the compiled kernels (``cuda/``, built by ``python install.py``), loaded lazily by
  :mod:`gsasr.render._native` on first use, never at import time, and never compiled mid-run unless
  ``GSASR_JIT=1``.
* ``"triton"``: the Triton kernel (:mod:`gsasr.render._triton`), compiled at run time for the GPU, no C++
  toolchain needed; ``triton`` is optional. With ``TRITON_INTERPRET=1`` it runs in Triton's interpreter on CPU
  tensors instead (slow; that is how it is tested without a GPU).
* ``"auto"`` (default): the first backend that works for the Gaussians' device, in the order of
  :data:`AUTO_ORDER` (on an NVIDIA or AMD GPU: cuda, then triton; on the CPU: cpu), else ``"torch"``, with one
  logged warning per process.

Every native backend (cpu, cuda, triton) is checked the first time it renders on a device in a process
(:mod:`gsasr.render.self_check`): if it disagrees with the reference on a small fixed case, or raises, it is
switched off for the process with one logged error, and ``"auto"`` moves on to the next backend.

The environment variable ``GSASR_RASTERIZER`` (torch, cpu, cuda, triton or auto) forces a backend when the caller
leaves ``backend="auto"``; an explicit ``backend=`` argument wins over it.
"""
from __future__ import annotations

import logging
import math
import os
from types import ModuleType

import torch
from torch import Tensor

from ..errors import BackendUnavailableError, InvalidInputError
from ..finite import all_finite
from . import reference, self_check
from .reference import DEFAULT_DMAX, SIGMA_CUTOFF, GaussianTerms, gaussian_terms
from .self_check import SelfCheck

__all__ = ["render_gaussians", "available_backends", "active_backend", "backend_device", "run_self_check",
           "BACKENDS", "AUTO_ORDER", "ENV_VAR", "DEFAULT_DMAX", "SIGMA_CUTOFF", "GaussianTerms", "gaussian_terms"]

BACKENDS: tuple[str, ...] = ("torch", "cpu", "cuda", "triton")
NATIVE_BACKENDS: tuple[str, ...] = ("cpu", "cuda", "triton")
AUTO_ORDER: dict[str, tuple[str, ...]] = {"cuda": ("cuda", "triton"), "xpu": ("triton",), "cpu": ("cpu",)}
"""Device type -> the native backends ``"auto"`` tries, in order, before the reference. The triton interpreter is
never chosen automatically (it is for tests)."""
ENV_VAR = "GSASR_RASTERIZER"

# (module, None) once the compiled module loaded, (None, reason) once it failed; None before the first try.
_compiled_cache: tuple[ModuleType | None, str | None] | None = None
_fallback_logged = False
# (backend, device) -> its self-check, run the first time the backend renders on that device in this process.
_self_checks: dict[tuple[str, str], SelfCheck] = {}
logger = logging.getLogger(__name__)


def _compiled() -> tuple[ModuleType | None, str | None]:
    """The compiled module, or the reason it cannot be used. Tried once per process, on first need."""
    global _compiled_cache
    if _compiled_cache is None:
        from . import _native as native  # the loader; it compiles nothing unless GSASR_JIT=1

        try:
            _compiled_cache = (native.load(), None)
        except native.NativeUnavailable as exc:
            _compiled_cache = (None, str(exc))
    return _compiled_cache


def cpu_network_kernels_reason() -> str | None:
    """None when :func:`cpu_network_kernels` has kernels to hand out, else why not (and what to do)."""
    module, reason = _compiled()
    if module is None:
        return reason
    if not hasattr(module, "network_kernels_vectorized"):
        return "the native module was built before them; rerun `python install.py`"
    if not module.network_kernels_vectorized():
        return ("they need a CPU with AVX-512 and bf16 (Intel Cooper Lake, Sapphire Rapids and later, AMD Zen 4/5) "
                "and GCC >= 10 or clang >= 9 to build them")
    return None


def cpu_network_kernels() -> ModuleType | None:
    """The compiled module when it carries the networks' bf16 CPU kernels (cuda/network_cpu.cpp, attention_cpu.cpp)
    and this CPU runs them vectorised, else None (PyTorch's own operations run instead). Not rendering, but the same
    compiled module, so it is handed out from here, the one place that loads it; the model passes it to its networks
    for bf16 forwards (archs/low_precision.fused_glue)."""
    return _compiled()[0] if cpu_network_kernels_reason() is None else None


def available_backends() -> dict[str, str | None]:
    """Each backend name -> None when it can be used in this process, else the reason it cannot.

    (A backend that failed its self-check on a device is still listed as available: see :func:`run_self_check`.)
    """
    module, reason = _compiled()
    status: dict[str, str | None] = {"torch": None}
    status["cpu"] = reason
    if module is None:
        status["cuda"] = reason
    elif not bool(getattr(module, "has_cuda", lambda: False)()):
        from . import _build

        status["cuda"] = f"the native rasteriser was built without CUDA: {_build.cuda_reason() or 'rebuild it'}"
    elif not torch.cuda.is_available():
        status["cuda"] = "PyTorch sees no CUDA device"
    else:
        status["cuda"] = None
    from . import _triton

    status["triton"] = _triton.unavailable_reason()
    return status


def backend_device(name: str) -> torch.device | None:
    """The device whose tensors backend ``name`` renders here (its self-check's device), None if unavailable."""
    if name != "torch" and available_backends()[name] is not None:
        return None
    if name == "triton":
        from . import _triton

        return _triton.device()
    if name == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _requested(backend: str) -> str:
    """The backend asked for: the argument, or ``GSASR_RASTERIZER`` when the argument is "auto"."""
    name = str(backend).strip().lower()
    if name not in BACKENDS + ("auto",):
        raise InvalidInputError(f"backend must be one of auto, {', '.join(BACKENDS)}; got {backend!r}.")
    if name == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env and env not in BACKENDS + ("auto",):
            raise InvalidInputError(f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not one of auto, {', '.join(BACKENDS)}; "
                                    f"fix or unset it.")
        name = env or "auto"
    return name


def _serves(name: str, device: torch.device) -> bool:
    """Whether backend ``name`` renders tensors on ``device`` (the torch backend serves every device)."""
    if name == "triton":
        from . import _triton

        return _triton.serves(device)
    return name == "torch" or device.type == name


def _render_native(name: str, gaussians: Tensor, scale: float | tuple[float, float], canvas_hw: tuple[int, int],
                   dmax: float, region: tuple[int, int, int, int]) -> Tensor:
    """Render with native backend ``name`` (available, serving the Gaussians' device; inputs checked)."""
    if name == "triton":
        from . import _triton

        return _triton.render(gaussians, scale, canvas_hw, dmax, region)
    from . import _native as native

    return native.render(_compiled()[0], gaussians, scale, canvas_hw, dmax, region)


def _device_key(device: torch.device) -> str:
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def run_self_check(name: str, device: torch.device | str) -> SelfCheck:
    """The self-check of native backend ``name`` on ``device``, run now if this process has not run it yet.

    The backend must be available and serve ``device``. A failure is logged once, as an error naming the backend
    and why, and switches the backend off on that device for the process.
    """
    device = torch.device(device)
    key = (name, _device_key(device))
    if key not in _self_checks:
        result = self_check.run(lambda *args: _render_native(name, *args), device)
        _self_checks[key] = result
        if not result.passed:
            logger.error("GSASR: the %s rasteriser is switched off on %s for this process: its %s.", name, key[1],
                         result.describe())
    return _self_checks[key]


def _unusable(name: str, device: torch.device) -> str | None:
    """None when native backend ``name`` can render Gaussians on ``device`` (its self-check run and passed), else
    why not."""
    reason = available_backends()[name]
    if reason is None and not _serves(name, device):
        if name == "triton":
            from . import _triton

            mode = "interpreted (TRITON_INTERPRET=1): CPU" if _triton.interpreted() else "compiled: GPU"
            reason = f"the triton backend renders {mode} tensors, but the Gaussians are on {device}"
        else:
            reason = f"the {name} backend renders {name.upper()} tensors, but the Gaussians are on {device}"
    if reason is None:
        check = run_self_check(name, device)
        if not check.passed:
            reason = f"its {check.describe()} (on {_device_key(device)})"
    return reason


def active_backend(device: torch.device | str) -> str:
    """The backend ``backend="auto"`` uses for Gaussians on ``device`` (``GSASR_RASTERIZER`` included).

    Runs the self-check of each native backend it considers, as the first render would.
    """
    device = torch.device(device)
    name = _requested("auto")
    if name != "auto":
        return name
    reasons = []
    for candidate in AUTO_ORDER.get(device.type, ()):
        reason = _unusable(candidate, device)
        if reason is None:
            return candidate
        reasons.append((candidate, reason))
    global _fallback_logged
    if reasons and not _fallback_logged:  # once per process: every render would otherwise repeat it
        _fallback_logged = True
        why = reasons[0][1] if len(reasons) == 1 else "; ".join(f"{n}: {r}" for n, r in reasons)
        logger.warning("GSASR: rendering with the slower PyTorch reference: %s.", why)
    return "torch"


def _resolve(backend: str, device: torch.device) -> str:
    name = _requested(backend)
    if name == "auto":
        return active_backend(device)
    if name == "torch":
        return name
    reason = _unusable(name, device)
    if reason is not None:
        raise BackendUnavailableError(f"rasteriser backend {name!r} is unavailable: {reason}. Use backend='torch' "
                                      f"or 'auto' to render with the PyTorch reference.")
    return name


def _check_inputs(gaussians: Tensor, scale: float | tuple[float, float], canvas_hw: tuple[int, int],
                  dmax: float, region: tuple[int, int, int, int] | None
                  ) -> tuple[tuple[float, float], tuple[int, int], tuple[int, int, int, int]]:
    if not isinstance(gaussians, Tensor):
        raise InvalidInputError(f"gaussians must be a torch.Tensor of shape (N, 9), got {type(gaussians).__name__}.")
    if gaussians.dim() != 2 or gaussians.shape[1] != 9:
        raise InvalidInputError(f"gaussians must have shape (N, 9) (one image's raw decoder output, order "
                                f"[p0, p1, rho, alpha, r, g, b, mean_x, mean_y]), got {tuple(gaussians.shape)}; "
                                f"render a batch one image at a time.")
    if not gaussians.is_floating_point():
        raise InvalidInputError(f"gaussians must be floating point, got {gaussians.dtype}.")
    if not all_finite(gaussians):
        raise InvalidInputError("gaussians contain NaN or infinite values; the decoder output is broken (try "
                                "amp='off' if it ran in reduced precision).")
    try:
        scales = reference.scale_pair(scale)
    except (TypeError, ValueError):
        raise InvalidInputError(f"scale must be a number or a (scale_h, scale_w) pair, got {scale!r}.") from None
    if not all(math.isfinite(s) and s > 0 for s in scales):
        raise InvalidInputError(f"scale must be finite and positive, got {scale!r}.")
    try:
        canvas_h, canvas_w = (int(n) for n in canvas_hw)
    except (TypeError, ValueError):
        raise InvalidInputError(f"canvas_hw must be (height, width), got {canvas_hw!r}.") from None
    if canvas_h < 1 or canvas_w < 1:
        raise InvalidInputError(f"canvas_hw must be positive, got {canvas_hw!r}.")
    try:
        dmax_ok = math.isfinite(float(dmax)) and float(dmax) >= 0
    except (TypeError, ValueError):
        dmax_ok = False
    if not dmax_ok:
        raise InvalidInputError(f"dmax must be a finite number >= 0 (normalised window half-width), got {dmax!r}.")
    if region is None:
        box = (0, 0, canvas_h, canvas_w)
    else:
        try:
            box = tuple(int(v) for v in region)
        except (TypeError, ValueError):
            raise InvalidInputError(f"region must be (y0, x0, height, width), got {region!r}.") from None
        if len(box) != 4:
            raise InvalidInputError(f"region must be (y0, x0, height, width), got {region!r}.")
        y0, x0, h, w = box
        if h < 1 or w < 1 or y0 < 0 or x0 < 0 or y0 + h > canvas_h or x0 + w > canvas_w:
            raise InvalidInputError(f"region {region!r} (y0, x0, height, width) must be non-empty and inside the "
                                    f"{canvas_h}x{canvas_w} canvas.")
    return scales, (canvas_h, canvas_w), box  # type: ignore[return-value]


def render_gaussians(gaussians: Tensor, scale: float | tuple[float, float], canvas_hw: tuple[int, int], *,
                     dmax: float = DEFAULT_DMAX, region: tuple[int, int, int, int] | None = None,
                     backend: str = "auto") -> Tensor:
    """Render one image's Gaussians on the whole canvas, or on a region of it.

    Args:
        gaussians: [N, 9] raw decoder output of one image, official order
            ``[p0, p1, rho, alpha, r, g, b, mean_x, mean_y]``; float32, float16 or bfloat16, any device. Reduced
            precision inputs are upcast; every backend computes and accumulates in float32.
        scale: the upscaling factor s (the Gaussians' std in canvas pixels is ``sigma * s / 1.2``), or a
            ``(scale_h, scale_w)`` pair for an anisotropic render.
        canvas_hw: (H, W) of the whole canvas, ``(floor(s * Hp), floor(s * Wp))`` for a padded LR of Hp x Wp.
            Coordinates and the dmax window are relative to it.
        dmax: support window half-width in align-corners normalised units of the whole canvas (official 0.1).
        region: optional ``(y0, x0, h, w)`` window of the canvas; the result equals the same crop of the full
            render (tiles and strips stay seamless).
        backend: "auto", "torch", "cpu", "cuda" or "triton" (see the module docstring).

    Returns:
        [3, h, w] float32 on ``gaussians.device`` (h, w: the region's size, else the canvas's).

    Raises:
        InvalidInputError: malformed Gaussians, scale, canvas, dmax or region.
        BackendUnavailableError: an explicitly requested backend cannot run here, or failed its self-check here
            (the message says why).
    """
    scales, canvas, box = _check_inputs(gaussians, scale, canvas_hw, dmax, region)
    name = _resolve(backend, gaussians.device)
    scale_arg: float | tuple[float, float] = scales[0] if scales[0] == scales[1] else scales
    if name == "torch":
        return reference.render_gaussians(gaussians, scale_arg, canvas, dmax=float(dmax), region=box)
    return _render_native(name, gaussians, scale_arg, canvas, float(dmax), box)
