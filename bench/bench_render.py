"""Rasteriser throughput per backend and size, with the PyTorch reference as the baseline.

    python bench/bench_render.py                              # CPU: 128^2 and 256^2 LR x4, 512^2 LR x2
    python bench/bench_render.py --sizes 256x4 --repeat 5 --device cuda

Gaussians are decoder-like: a row-major 4H x 4W grid per LR image, each mean at its cell centre plus a small
random offset, random sigmas (std up to 0.83 LR px), rho and colours. Per backend and size: median and p90 ms,
Gaussian-pixel pairs per second (pairs = the reference's window-test pairs, the same count for every backend, so
the rates compare work done), peak memory, and the max abs error against the reference. Prints an environment
header, a fixed-column table, and a last line ``RESULT key=value ...``. On CUDA both gather kernels are timed,
``cuda`` (scan, the default) and ``cuda:compact`` (GSASR_CUDA_GATHER=compact); their outputs must be identical.
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

from gsasr.render import _native, available_backends, render_gaussians  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["128x4", "256x4", "512x2"], help="LRxSCALE, e.g. 256x4")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reference-repeat", type=int, default=1)
    args = parser.parse_args()
    device = torch.device(args.device)
    status = available_backends()
    native = "cuda" if device.type == "cuda" else "cpu"
    backends = ["torch"] + ([native] if status[native] is None else [])
    if native == "cuda" and status[native] is None:
        backends.append("cuda:compact")
    print(environment_header(device, ','.join(backends)))
    if status[native] is not None:
        print(f"# {native} backend unavailable: {status[native]}")
    print(f"{'backend':<12} {'LR':>5} {'scale':>5} {'output':>11} {'median ms':>10} {'p90 ms':>9} "
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
            repeat = args.reference_repeat if backend == "torch" else args.repeat
            name, _, gather = backend.partition(":")
            os.environ[_native.CUDA_GATHER_ENV_VAR] = gather or _native.CUDA_GATHERS[0]
            if name != "torch":
                render_gaussians(raw, scale, canvas, backend=name)  # warm-up (loads the module)
            out, times = timed(lambda b=name, r=raw, s=scale, c=canvas: render_gaussians(r, s, c, backend=b), device,
                               repeat)
            if backend == "torch":
                reference = out
            err = float((out - reference).abs().max())
            median = statistics.median(times)
            p90 = sorted(times)[min(len(times) - 1, int(0.9 * len(times)))]
            print(f"{backend:<12} {lr:>5} {scale:>5g} {f'{canvas[0]}x{canvas[1]}':>11} {median:>10.1f} {p90:>9.1f} "
                  f"{work / median / 1e3:>9.1f} {peak_mb(device):>8.0f} {err:>9.2e}")
            key = f"{backend.replace(':', '_')}_{lr}x{scale:g}"
            result[f"{key}_ms"] = f"{median:.1f}"
            if backend != "torch":
                result[f"{key}_err"] = f"{err:.1e}"
                result[f"{key}_speedup"] = f"{float(result[f'torch_{lr}x{scale:g}_ms']) / median:.1f}"
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
