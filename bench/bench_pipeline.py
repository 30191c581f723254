"""End-to-end GSASR timing per architecture: encoder / decoder / stitch / render, on generated weights.

    python bench/bench_pipeline.py --archs EDSR_DIV2K HATL_SA1B --size 256 --scale 4 --repeat 1
    python bench/bench_pipeline.py --archs EDSR_DIV2K --size 512 --scale 4 --tile 192

Weights follow the golden rule (../shared/golden or tests/golden), so the networks' cost is the real one; the
render cost depends on the Gaussians' sizes, which untrained weights only approximate. ``--tile N`` runs the
networks on LR tiles (gsasr.tiling) and reports the stitching (moving each tile's Gaussians into the global set)
on its own; without it the image is one tile and stitch is 0.

How close to the hardware: the networks' FLOPs (torch's FlopCounterMode on a 48 x 48 crop, attention included,
scaled by the LR pixels actually computed, context included; the networks are convolutions and windowed
attention, linear in the pixels) divided by the float32 matmul rate give the time the networks would take at
matmul speed; ``x bound`` is the measured encoder + decoder time over that bound. The rate is the best of several
timed 2048^3 products, measured before and after each architecture, the higher kept: a slow moment of a shared
machine does not lower the bar.

Prints an environment header, a table and a last line ``RESULT key=value ...``.
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
from gsasr import tiling  # noqa: E402
from gsasr.model import output_geometry, pad_to_multiple  # noqa: E402
from gsasr.render import active_backend  # noqa: E402

FLOP_PROBE = 48  # LR side of the crop whose FLOPs are counted (a multiple of every model's window)

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


def matmul_gflops(device: torch.device, n: int = 2048, repeat: int = 4, trials: int = 5) -> float:
    """Measured float32 matmul rate: the practical peak the networks' FLOPs could run at (best of ``trials``)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    best = min(timed(lambda: [a @ b for _ in range(repeat)], device)[1] for _ in range(trials))
    return 2 * n ** 3 * repeat / best / 1e9


def _attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """q k^T and (softmax) v: 2 b h Lq Lk (d_qk + d_v), the count torch uses for its CUDA attention kernels."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def network_flops_per_lr_pixel(model, scale: float, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    # FlopCounterMode knows the CUDA attention kernels but not the CPU ones; without these the windowed attention
    # (~5 % of the decoder's FLOPs) would be left out of the bound.
    attention = {op: _attention_flops for op in (torch.ops.aten._scaled_dot_product_flash_attention_for_cpu,
                                                 torch.ops.aten._scaled_dot_product_attention_math)}
    probe = torch.rand(1, 3, FLOP_PROBE, FLOP_PROBE, device=device)
    model.requires_grad_(False)  # the counter hooks the backward of anything that requires grad
    with FlopCounterMode(display=False, custom_mapping=attention) as counter:
        model.decoder(model.encoder(probe), scale)
    return counter.get_total_flops() / FLOP_PROBE ** 2


def computed_lr_pixels(padded_hw: tuple[int, int], tile: int, denominator: int) -> int:
    """LR pixels the networks run on: the image, or every tile's core plus its context."""
    if not tile:
        return padded_hw[0] * padded_hw[1]
    plan = tiling.plan_tiles(padded_hw, tile, tiling.context_margin(denominator))
    return sum((t.extent[1] - t.extent[0]) * (t.extent[3] - t.extent[2]) for t in plan)


@torch.inference_mode()
def run_case(model, size: int, scale: float, repeat: int, device: torch.device, tile: int) -> dict:
    torch.manual_seed(0)
    image = torch.rand(1, 3, size, size, device=device)
    geometry = output_geometry((size, size), scale)
    x = pad_to_multiple(image, model.denominator)
    canvas = geometry.canvas_hw(tuple(x.shape[-2:]))
    tile = tiling.round_tile(tile, model.denominator) if tile else 0
    times = {"encoder": [], "decoder": [], "stitch": [], "render": []}
    for _ in range(repeat):
        clock = {"encoder": 0.0, "decoder": 0.0}

        def networks(crop):
            feat, t_enc = timed(lambda: model.encoder(crop), device)
            gs, t_dec = timed(lambda: model.decoder(feat, scale), device)
            clock["encoder"] += t_enc
            clock["decoder"] += t_dec
            return gs

        if tile:
            gs, t_all = timed(lambda: tiling.tiled_gaussians(networks, x, tile, model.denominator), device)
            t_stitch = t_all - clock["encoder"] - clock["decoder"]
        else:
            gs, t_stitch = networks(x)[0], 0.0
        _, t_ren = timed(lambda: tiling.render_in_strips(gs, scale, canvas, geometry.out_hw, dmax=0.1,
                                                         backend="auto"), device)
        for key, value in (("encoder", clock["encoder"]), ("decoder", clock["decoder"]), ("stitch", t_stitch),
                           ("render", t_ren)):
            times[key].append(value)
        del gs
    totals = [sum(t) for t in zip(*times.values())]
    out_mp = geometry.out_hw[0] * geometry.out_hw[1] / 1e6
    return {k: statistics.median(v) for k, v in times.items()} | {
        "total": statistics.median(totals), "mp_s": out_mp / statistics.median(totals),
        "peak_mb": peak_memory_mb(device), "out": geometry.out_hw,
        "lr_pixels_computed": computed_lr_pixels(tuple(x.shape[-2:]), tile, model.denominator)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=ARCHS, choices=ARCHS)
    parser.add_argument("--size", type=int, default=256, help="LR side in pixels")
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--tile", type=int, default=0, help="LR tile size (0: whole image)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    from conftest import load_golden

    golden = load_golden()
    print(environment_header(device, active_backend(device)))
    print(f"# matmul rate: float32 2048^3 on {device}, best of before and after each architecture; "
          f"tile {args.tile or 'none'}")
    print(f"{'arch':<11} {'LR':>9} {'out':>11} {'encoder s':>10} {'decoder s':>10} {'stitch s':>9} {'render s':>9} "
          f"{'total s':>8} {'out MP/s':>9} {'GFLOP':>7} {'GFLOP/s':>8} {'bound s':>8} {'x bound':>8} {'peak MB':>8}"
          f"  (CPU: process peak RSS so far)")
    results = {}
    rate = matmul_gflops(device)
    for arch in args.archs:
        with tempfile.TemporaryDirectory() as tmp:
            model = gsasr.load_model(golden.write_official_checkpoint(arch, tmp), device=device)
        r = run_case(model, args.size, args.scale, args.repeat, device, args.tile)
        # A shared machine's speed drifts; the faster of the two measurements around the run makes the bound
        # the stricter one.
        rate_after = matmul_gflops(device)
        r["rate"] = max(rate, rate_after)
        rate = rate_after
        r["gflop"] = network_flops_per_lr_pixel(model, args.scale, device) * r["lr_pixels_computed"] / 1e9
        r["bound"] = r["gflop"] / r["rate"]
        r["x_bound"] = (r["encoder"] + r["decoder"]) / r["bound"]
        results[arch] = r
        lr_size, out_size = f"{args.size}x{args.size}", "{}x{}".format(*r["out"])
        print(f"{arch:<11} {lr_size:>9} {out_size:>11} "
              f"{r['encoder']:>10.2f} {r['decoder']:>10.2f} {r['stitch']:>9.2f} {r['render']:>9.2f} "
              f"{r['total']:>8.2f} {r['mp_s']:>9.3f} {r['gflop']:>7.0f} {r['rate']:>8.1f} {r['bound']:>8.2f} "
              f"{r['x_bound']:>8.2f} "
              f"{r['peak_mb']:>8.0f}", flush=True)
        del model
    summary = " ".join(f"{a}_s={r['total']:.2f} {a}_matmul_gflops={r['rate']:.1f} {a}_x_bound={r['x_bound']:.2f}"
                       for a, r in results.items())
    print(f"RESULT size={args.size} scale={args.scale:g} device={device.type} tile={args.tile} {summary}")


if __name__ == "__main__":
    main()
