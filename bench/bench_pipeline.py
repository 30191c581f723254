"""End-to-end GSASR timing per architecture: encoder / decoder / render, on generated weights.

    python bench/bench_pipeline.py --archs EDSR_DIV2K HATL_SA1B --size 256 --scale 4 --repeat 1

Weights follow the golden rule (../shared/golden or tests/golden), so the networks' cost is the real one; the
render cost depends on the Gaussians' sizes, which untrained weights only approximate. Prints an environment
header, a table and a last line ``RESULT key=value ...``.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _environment import environment_header  # bench/ is on sys.path when a benchmark runs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import gsasr  # noqa: E402
from gsasr.model import output_geometry, pad_to_multiple  # noqa: E402
from gsasr.render import active_backend, render_gaussians  # noqa: E402

ARCHS = ["EDSR", "RDN", "SWIN", "EDSR_DIV2K", "RDN_DIV2K", "SWIN_DIV2K", "HATL_SA1B"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (kB on Linux)


@torch.inference_mode()
def run_case(model, size: int, scale: float, repeat: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    image = torch.rand(1, 3, size, size, device=device)
    geometry = output_geometry((size, size), scale)
    x = pad_to_multiple(image, model.denominator)
    canvas = geometry.canvas_hw(tuple(x.shape[-2:]))
    times = {"encoder": [], "decoder": [], "render": []}
    for _ in range(repeat):
        feat, t_enc = timed(lambda: model.encoder(x), device)
        gs, t_dec = timed(lambda: model.decoder(feat, scale), device)
        _, t_ren = timed(lambda: render_gaussians(gs[0], scale, canvas, region=(0, 0, *geometry.out_hw)), device)
        times["encoder"].append(t_enc)
        times["decoder"].append(t_dec)
        times["render"].append(t_ren)
    totals = [sum(t) for t in zip(*times.values())]
    out_mp = geometry.out_hw[0] * geometry.out_hw[1] / 1e6
    return {k: statistics.median(v) for k, v in times.items()} | {
        "total": statistics.median(totals), "mp_s": out_mp / statistics.median(totals),
        "peak_mb": peak_memory_mb(device), "out": geometry.out_hw}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=ARCHS, choices=ARCHS)
    parser.add_argument("--size", type=int, default=256, help="LR side in pixels")
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    from conftest import load_golden

    golden = load_golden()
    print(environment_header(device, active_backend(device)))
    print(f"{'arch':<11} {'LR':>9} {'out':>11} {'encoder s':>10} {'decoder s':>10} {'render s':>9} "
          f"{'total s':>8} {'out MP/s':>9} {'peak MB':>8}  (CPU: process peak RSS so far)")
    results = {}
    for arch in args.archs:
        with tempfile.TemporaryDirectory() as tmp:
            model = gsasr.load_model(golden.write_official_checkpoint(arch, tmp), device=device)
        r = run_case(model, args.size, args.scale, args.repeat, device)
        results[arch] = r
        lr_size, out_size = f"{args.size}x{args.size}", "{}x{}".format(*r["out"])
        print(f"{arch:<11} {lr_size:>9} {out_size:>11} "
              f"{r['encoder']:>10.2f} {r['decoder']:>10.2f} {r['render']:>9.2f} {r['total']:>8.2f} "
              f"{r['mp_s']:>9.3f} {r['peak_mb']:>8.0f}", flush=True)
        del model
    summary = " ".join(f"{a}_s={r['total']:.2f}" for a, r in results.items())
    print(f"RESULT size={args.size} scale={args.scale:g} device={device.type} {summary}")


if __name__ == "__main__":
    main()
