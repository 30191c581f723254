"""Rasteriser throughput per backend and size, with the PyTorch reference as the baseline.

    python bench/bench_render.py                              # CPU: 128^2 and 256^2 LR x4, 512^2 LR x2
    python bench/bench_render.py --sizes 256x4 --repeat 5 --device cuda

Gaussians are decoder-like: a row-major 4H x 4W grid per LR image, each mean at its cell centre plus a small
random offset, random sigmas (std up to 0.83 LR px), rho and colours. Per backend and size: median and p90 ms,
Gaussian-pixel pairs per second (pairs = the reference's window-test pairs, the same count for every backend, so
the rates compare work done), peak memory, and the max abs error against the reference. Prints an environment
header, a fixed-column table, and a last line ``RESULT key=value ...``. On CUDA both gather kernels are timed,
``cuda`` (scan, the default) and ``cuda:compact`` (GSASR_CUDA_GATHER=compact); their outputs must be identical.

The triton backend gets a row wherever it can render the device's tensors: compiled on a GPU (``triton``, plus
``triton:bN`` for each ``--triton-blocks N``, GSASR_TRITON_BLOCK=N candidates per kernel step), or on the CPU
under ``TRITON_INTERPRET=1``. Interpreter rows (``triton(interp)``) are parity checks, not timings: they render a
central crop of at most 64 x 64 pixels (the interpreter runs ~10^4 candidate tests a second), compare it with the
reference's, and print no times.

    TRITON_INTERPRET=1 python bench/bench_render.py --sizes 32x4      # triton interpreter parity row on the CPU
    python bench/bench_render.py --device cuda --triton-blocks 1 4 16  # GPU: cuda, cuda:compact, triton variants
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from _environment import environment_header  # bench/ is on sys.path when a benchmark runs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gsasr.render import _native, _triton, available_backends, render_gaussians  # noqa: E402
from gsasr.render.reference import gaussian_terms, support_radius  # noqa: E402


def decoder_like(lr: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    g = 4 * lr
    raw = torch.randn(g * g, 9, generator=gen)
    ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    raw[:, 7] = (xs.reshape(-1) + 0.5 + 0.3 * torch.randn(g * g, generator=gen)) / g
    raw[:, 8] = (ys.reshape(-1) + 0.5 + 0.3 * torch.randn(g * g, generator=gen)) / g
    return raw


def pairs(raw: torch.Tensor, scale: float, canvas: tuple[int, int]) -> float:
    """Pixels inside each Gaussian's reference support (min(dmax, 8 sigma) box), summed: the work measure."""
    terms = gaussian_terms(raw, scale, canvas)
    radius = support_radius(terms.sigma, 0.1).double()
    width = (radius[:, 0] * (canvas[1] - 1) + 1).clamp(max=canvas[1])
    height = (radius[:, 1] * (canvas[0] - 1) + 1).clamp(max=canvas[0])
    return float((width * height).sum())


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def timed(fn, device: torch.device, repeat: int) -> tuple[torch.Tensor, list[float]]:
    times, out = [], None
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return out, times


INTERPRETER_CROP = 64
"""Side of the central crop an interpreted triton row renders (a parity check, not a timing)."""

VARIANT_ENV = {"cuda": _native.CUDA_GATHER_ENV_VAR, "triton": _triton.BLOCK_ENV_VAR}
"""Backend -> the environment variable its ``name:variant`` rows set (cuda:compact, triton:b4)."""


def select_variant(backend: str) -> str:
    """Set the variant's environment variable (or clear it for the default) and return the backend's name."""
    name, _, variant = backend.partition(":")
    for owner, var in VARIANT_ENV.items():
        value = variant.removeprefix("b") if owner == name and variant else ""
        if value:
            os.environ[var] = value
        else:
            os.environ.pop(var, None)
    return name


def central_crop(canvas: tuple[int, int]) -> tuple[int, int, int, int]:
    h, w = min(canvas[0], INTERPRETER_CROP), min(canvas[1], INTERPRETER_CROP)
    return ((canvas[0] - h) // 2, (canvas[1] - w) // 2, h, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["128x4", "256x4", "512x2"], help="LRxSCALE, e.g. 256x4")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reference-repeat", type=int, default=1)
    parser.add_argument("--triton-blocks", nargs="*", type=int, default=[],
                        help="also time triton with these candidates per kernel step (GSASR_TRITON_BLOCK)")
    args = parser.parse_args()
    device = torch.device(args.device)
    status = available_backends()
    native = "cuda" if device.type == "cuda" else "cpu"
    backends = ["torch"] + ([native] if status[native] is None else [])
    if native == "cuda" and status[native] is None:
        backends.append("cuda:compact")
    interpreted = status["triton"] is None and _triton.interpreted()
    if status["triton"] is None and _triton.serves(device):
        backends.append("triton(interp)" if interpreted else "triton")
        if not interpreted:
            backends += [f"triton:b{block}" for block in args.triton_blocks]
    print(environment_header(device, ','.join(backends)))
    for name in (native, "triton"):
        if status[name] is not None:
            print(f"# {name} backend unavailable: {status[name]}")
    if interpreted:
        print(f"# triton(interp): Triton's interpreter (TRITON_INTERPRET=1) on a central crop of at most "
              f"{INTERPRETER_CROP}x{INTERPRETER_CROP} px: max err only, no timing")
    print(f"{'backend':<14} {'LR':>5} {'scale':>5} {'output':>11} {'median ms':>10} {'p90 ms':>9} "
          f"{'Mpairs/s':>9} {'peak MB':>8} {'max err':>9}")
    result = {}
    for size in args.sizes:
        lr, scale = int(size.split("x")[0]), float(size.split("x")[1])
        raw = decoder_like(lr).to(device)
        canvas = (int(lr * scale), int(lr * scale))
        work = pairs(raw.cpu(), scale, canvas)
        reference = None
        for backend in backends:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            key = f"{backend.replace(':', '_').replace('(interp)', '_interp')}_{lr}x{scale:g}"
            if backend == "triton(interp)":
                select_variant("triton")
                crop = central_crop(canvas)
                out = render_gaussians(raw, scale, canvas, region=crop, backend="triton")
                y0, x0, h, w = crop
                err = float((out - reference[:, y0:y0 + h, x0:x0 + w]).abs().max())
                print(f"{backend:<14} {lr:>5} {scale:>5g} {f'{h}x{w} crop':>11} {'-':>10} {'-':>9} {'-':>9} "
                      f"{'-':>8} {err:>9.2e}")
                result[f"{key}_err"] = f"{err:.1e}"
                continue
            repeat = args.reference_repeat if backend == "torch" else args.repeat
            name = select_variant(backend)
            if name != "torch":
                render_gaussians(raw, scale, canvas, backend=name)  # warm-up (loads the module, compiles triton)
            out, times = timed(lambda b=name, r=raw, s=scale, c=canvas: render_gaussians(r, s, c, backend=b), device,
                               repeat)
            if backend == "torch":
                reference = out
            err = float((out - reference).abs().max())
            median = statistics.median(times)
            p90 = sorted(times)[min(len(times) - 1, int(0.9 * len(times)))]
            print(f"{backend:<14} {lr:>5} {scale:>5g} {f'{canvas[0]}x{canvas[1]}':>11} {median:>10.1f} {p90:>9.1f} "
                  f"{work / median / 1e3:>9.1f} {peak_mb(device):>8.0f} {err:>9.2e}")
            result[f"{key}_ms"] = f"{median:.1f}"
            if backend != "torch":
                result[f"{key}_err"] = f"{err:.1e}"
                result[f"{key}_speedup"] = f"{float(result[f'torch_{lr}x{scale:g}_ms']) / median:.1f}"
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
