"""End-to-end GSASR timing per architecture: encoder / decoder / stitch / render, on generated weights.

    python bench/bench_pipeline.py --archs EDSR_DIV2K HATL_SA1B --size 256 --scale 4 --repeat 1
    python bench/bench_pipeline.py --archs EDSR_DIV2K --size 256 --scale 4 --control
    python bench/bench_pipeline.py --archs EDSR_DIV2K --size 512 --scale 4 --tile 192
    python bench/bench_pipeline.py --archs EDSR --size 246x200 --scale 4 --amp auto --repeat 5 --device cuda
    python bench/bench_pipeline.py --archs EDSR_DIV2K HATL_SA1B --size 96 --amp off auto --rate-seconds 2

Weights follow the golden rule (../shared/golden or tests/golden), so the networks' cost is the real one; the
render cost depends on the Gaussians' sizes, which untrained weights only approximate. ``--tile N`` runs the
networks on LR tiles (gsasr.tiling) and reports the stitching (moving each tile's Gaussians into the global set)
on its own; without it the image is one tile and stitch is 0.

How close to the hardware: the networks' FLOPs (torch's FlopCounterMode on a 48 x 48 crop, attention included,
scaled by the LR pixels actually computed, context included; the networks are convolutions and windowed
attention, linear in the pixels) divided by the float32 matmul rate give the time the networks would take at
matmul speed; ``x bound`` is the measured encoder + decoder time over that bound. The rate is measured before and
after each architecture, two ways:

* burst: the best of several short runs of 2048^3 products, the higher of before and after (a slow moment of a
  shared machine does not lower the bar);
* sustained: 2048^3 products back to back for ``--rate-seconds``, total FLOPs over total time, the mean of before
  and after. A run of the networks lasts seconds to minutes; on a shared machine (a cloud VM) its speed wanders
  over that time, and the burst rate is a peak that no computation that long reaches, the products themselves
  included. ``x sust`` compares the networks with matmuls over a comparable stretch of time.

``--control`` checks the measure itself: it runs 2048^3 products back to back for as long as the networks ran and
scores that pure-matmul workload the same way (on a 2-core cloud VM, 50 s of products scored x bound 1.06-1.29,
x sust 0.89-1.11), and gives the networks' time over their FLOPs at the control's own rate (``x_control``).

With ``--amp`` the networks run like ``model.upscale(amp=...)`` (``model.precision``: autocast, and on a CPU the
weights cast once). Every run is scored against two bounds, whatever its mode: ``x f32`` (FLOPs over the burst
float32 matmul rate) and ``x bf16`` (over the burst bf16 rate; on CPUs with AMX or AVX512-BF16 several times the
float32 one); ``x sust`` uses the sustained rate in the run's own dtype. ``--amp off auto`` runs both modes on each
architecture in the same process and gives the speed-up of each over the first (on a shared machine, compare modes
only within one run).

On a GPU one untimed run comes first (CUDA context, cuDNN's algorithm search, the rasteriser module's load); the
table gives the median of ``--repeat`` timed runs.

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
from typing import NamedTuple

import torch
from _environment import environment_header  # bench/ is on sys.path when a benchmark runs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import gsasr  # noqa: E402
from gsasr import tiling  # noqa: E402
from gsasr.model import AMP_MODES, output_geometry, pad_to_multiple, resolve_amp  # noqa: E402
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


class MatmulRate(NamedTuple):
    """GFLOP/s of n^3 matrix products: ``burst`` the best of a few short runs, ``sustained`` over a longer stretch."""
    burst: float
    sustained: float


def _square_operands(device: torch.device, dtype: torch.dtype, n: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    return a, b


def _products_rate(a: torch.Tensor, b: torch.Tensor, seconds: float, repeat: int) -> float:
    """GFLOP/s of ``a @ b`` (square) run back to back for at least ``seconds``: total FLOPs over total time."""
    products, start = 0, time.perf_counter()
    while True:
        timed(lambda: [a @ b for _ in range(repeat)], a.device)
        products += repeat
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * a.shape[0] ** 3 * products / elapsed / 1e9


def matmul_stream(device: torch.device, seconds: float, dtype: torch.dtype = torch.float32, n: int = 2048,
                  repeat: int = 4) -> float:
    """GFLOP/s of n^3 products run back to back for at least ``seconds``."""
    return _products_rate(*_square_operands(device, dtype, n), seconds, repeat)


def matmul_rate(device: torch.device, seconds: float, n: int = 2048, repeat: int = 4, trials: int = 5,
                dtype: torch.dtype = torch.float32) -> MatmulRate:
    """Measured matmul rates: the practical peak the networks' FLOPs could run at (best of ``trials`` runs of
    ``repeat`` products), and the rate of products run back to back for ``seconds`` (see the module docstring)."""
    a, b = _square_operands(device, dtype, n)
    best = min(timed(lambda: [a @ b for _ in range(repeat)], device)[1] for _ in range(trials))
    return MatmulRate(2 * n ** 3 * repeat / best / 1e9, _products_rate(a, b, seconds, repeat))


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


def parse_size(text: str) -> tuple[int, int]:
    """'256' -> (256, 256); '246x200' (width x height, like image sizes) -> (200, 246) as (H, W)."""
    width, _, height = text.lower().partition("x")
    return (int(height or width), int(width))


def one_run(model, x: torch.Tensor, scale: float, tile: int, canvas: tuple[int, int], out_hw: tuple[int, int],
            device: torch.device, amp_dtype: torch.dtype | None) -> dict[str, float]:
    """Seconds of each phase of one upscale of the padded image ``x``, the networks in ``model.precision``."""
    clock = {"encoder": 0.0, "decoder": 0.0}

    def networks(crop):
        feat, t_enc = timed(lambda: model.encoder(crop), device)
        gs, t_dec = timed(lambda: model.decoder(feat, scale), device)
        clock["encoder"] += t_enc
        clock["decoder"] += t_dec
        return gs

    with model.precision(amp_dtype):  # once for all tiles, as model.upscale does
        if tile:
            gs, t_all = timed(lambda: tiling.tiled_gaussians(networks, x, tile, model.denominator), device)
            t_stitch = t_all - clock["encoder"] - clock["decoder"]
        else:
            gs, t_stitch = networks(x)[0], 0.0
    _, t_render = timed(lambda: tiling.render_in_strips(gs, scale, canvas, out_hw, dmax=0.1, backend="auto"), device)
    return clock | {"stitch": t_stitch, "render": t_render}


@torch.inference_mode()
def run_case(model, hw: tuple[int, int], scale: float, repeat: int, device: torch.device, tile: int,
             amp_dtype: torch.dtype | None) -> dict:
    torch.manual_seed(0)
    image = torch.rand(1, 3, *hw, device=device)
    geometry = output_geometry(hw, scale)
    x = pad_to_multiple(image, model.denominator)
    canvas = geometry.canvas_hw(tuple(x.shape[-2:]))
    tile = tiling.round_tile(tile, model.denominator) if tile else 0
    if device.type == "cuda":
        one_run(model, x, scale, tile, canvas, geometry.out_hw, device, amp_dtype)  # warm-up, not timed
    runs = [one_run(model, x, scale, tile, canvas, geometry.out_hw, device, amp_dtype) for _ in range(repeat)]
    totals = [sum(run.values()) for run in runs]
    out_mp = geometry.out_hw[0] * geometry.out_hw[1] / 1e6
    return {k: statistics.median(run[k] for run in runs) for k in runs[0]} | {
        "total": statistics.median(totals), "mp_s": out_mp / statistics.median(totals),
        "peak_mb": peak_memory_mb(device), "out": geometry.out_hw,
        "lr_pixels_computed": computed_lr_pixels(tuple(x.shape[-2:]), tile, model.denominator)}


RATE_DTYPES = (torch.float32, torch.bfloat16)  # the bounds reported for every run, whatever its amp mode


def measured_rates(device: torch.device, seconds: float, sustained_dtypes: set) -> dict:
    """{dtype: MatmulRate} for float32 and bf16; the sustained rate only for ``sustained_dtypes`` (0 otherwise)."""
    return {dtype: matmul_rate(device, seconds, dtype=dtype) if dtype in sustained_dtypes
            else MatmulRate(matmul_rate(device, 0.0, dtype=dtype).burst, 0.0) for dtype in RATE_DTYPES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=ARCHS, choices=ARCHS)
    parser.add_argument("--size", type=parse_size, default=(256, 256),
                        help="LR size in pixels: a side (256) or width x height (246x200)")
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--tile", type=int, default=0, help="LR tile size (0: whole image)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--chunks", type=lambda t: tuple(int(v) for v in t.split(",")), default=None,
                        metavar="GAUSSIANS,SEEDS", help="decoder chunk sizes (default: the decoder's choice for "
                                                         "the device), e.g. 131072,131072")
    parser.add_argument("--amp", nargs="+", default=["off"], choices=AMP_MODES,
                        help="run the networks like model.upscale(amp=...); default off (float32). Several modes "
                             "(e.g. off auto) run one after the other on each architecture, in the same process, "
                             "and the table gives each one's speed-up over the first")
    parser.add_argument("--rate-seconds", type=float, default=10.0,
                        help="how long each sustained matmul-rate measurement runs (before and after each "
                             "architecture)")
    parser.add_argument("--control", action="store_true",
                        help="after each architecture, also run 2048^3 products back to back for as long as its "
                             "networks ran, and report that pure-matmul workload's x bound and x sust: what the "
                             "same measure gives the matmul itself on this machine")
    args = parser.parse_args()
    device = torch.device(args.device)
    modes = {mode: resolve_amp(mode, device) for mode in dict.fromkeys(args.amp)}
    compute_dtypes = {dtype or torch.float32 for dtype in modes.values()}
    from conftest import load_golden

    golden = load_golden()
    print(environment_header(device, active_backend(device)))
    print(f"# matmul rates: float32 and bf16 2048^3 on {device}, before and after each architecture: burst = the "
          f"best short run, sustained = {args.rate_seconds:g} s back to back in each run's dtype; amp "
          + ", ".join(f"{m} ({str(d or torch.float32).removeprefix('torch.')})" for m, d in modes.items())
          + f"; tile {args.tile or 'none'}; decoder chunks {args.chunks or 'by device'}")
    print(f"{'arch':<11} {'amp':<5} {'LR':>9} {'out':>11} {'encoder s':>10} {'decoder s':>10} {'stitch s':>9} "
          f"{'render s':>9} {'total s':>8} {'speed-up':>8} {'out MP/s':>9} {'GFLOP':>7} {'f32 GF/s':>9} "
          f"{'x f32':>6} {'bf16 GF/s':>9} {'x bf16':>6} {'sust GF/s':>9} {'x sust':>7} {'peak MB':>8}"
          f"  (x f32 / x bf16: networks' time over their FLOPs at the burst float32 / bf16 matmul rate; x sust: at "
          f"the sustained rate of the run's dtype; speed-up: networks' time of the first amp mode over this one's; "
          f"CPU peak: process peak RSS so far; CUDA: this architecture's peak allocated)")
    results = {}
    rates = measured_rates(device, args.rate_seconds, compute_dtypes)
    for arch in args.archs:
        with tempfile.TemporaryDirectory() as tmp:
            model = gsasr.load_model(golden.write_official_checkpoint(arch, tmp), device=device)
        if args.chunks:
            model.decoder.max_gaussians_per_chunk, model.decoder.max_tokens_per_chunk = args.chunks
        gflop_per_pixel = network_flops_per_lr_pixel(model, args.scale, device)
        runs = {}
        for mode, amp_dtype in modes.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)  # each run's own peak (weights included)
            r = run_case(model, args.size, args.scale, args.repeat, device, args.tile, amp_dtype)
            r["networks"] = r["encoder"] + r["decoder"]
            if args.control:
                r["control"] = matmul_stream(device, r["networks"], amp_dtype or torch.float32)
            runs[mode] = r
        rates_after = measured_rates(device, args.rate_seconds, compute_dtypes)
        first = next(iter(runs.values()))
        for mode, r in runs.items():
            dtype = modes[mode] or torch.float32
            # A shared machine's speed drifts: the faster burst around the run makes the bound the stricter one; the
            # sustained rates before and after are averaged, like the run averages over its own stretch of time.
            burst = {d: max(rates[d].burst, rates_after[d].burst) for d in RATE_DTYPES}
            r["rate"], r["rate_bf16"] = burst[torch.float32], burst[torch.bfloat16]
            r["rate_sustained"] = (rates[dtype].sustained + rates_after[dtype].sustained) / 2
            r["gflop"] = gflop_per_pixel * r["lr_pixels_computed"] / 1e9
            r["bound"] = r["gflop"] / burst[dtype]
            r["x_f32"] = r["networks"] / (r["gflop"] / r["rate"])
            r["x_bf16"] = r["networks"] / (r["gflop"] / r["rate_bf16"])
            r["x_bound"] = r["networks"] / r["bound"]
            r["x_sustained"] = r["networks"] / (r["gflop"] / r["rate_sustained"])
            r["speedup"] = first["networks"] / r["networks"]
            results[(arch, mode)] = r
            lr_size, out_size = "{1}x{0}".format(*args.size), "{1}x{0}".format(*r["out"])
            print(f"{arch:<11} {mode:<5} {lr_size:>9} {out_size:>11} "
                  f"{r['encoder']:>10.2f} {r['decoder']:>10.2f} {r['stitch']:>9.2f} {r['render']:>9.2f} "
                  f"{r['total']:>8.2f} {r['speedup']:>8.2f} {r['mp_s']:>9.3f} {r['gflop']:>7.0f} {r['rate']:>9.1f} "
                  f"{r['x_f32']:>6.2f} {r['rate_bf16']:>9.1f} {r['x_bf16']:>6.2f} {r['rate_sustained']:>9.1f} "
                  f"{r['x_sustained']:>7.2f} {r['peak_mb']:>8.0f}", flush=True)
            if "control" in r:
                control = r["control"]
                # a workload of `networks` seconds at the control's rate, measured like the networks
                r["control"] = (burst[dtype] / control, r["rate_sustained"] / control)
                r["x_control"] = r["networks"] / (r["gflop"] / control)
                print(f"# control ({mode}): 2048^3 products back to back for {r['networks']:.1f} s ran at "
                      f"{control:.1f} GFLOP/s: x bound {r['control'][0]:.2f}, x sust {r['control'][1]:.2f}; the "
                      f"networks' time over their FLOPs at the control's rate: {r['x_control']:.2f}", flush=True)
        rates = rates_after
        del model
    summary = []
    for (arch, mode), r in results.items():
        key = arch if len(modes) == 1 else f"{arch}_{mode}"
        summary.append(f"{key}_s={r['total']:.2f} {key}_networks_s={r['networks']:.2f} "
                       f"{key}_matmul_gflops={r['rate']:.1f} {key}_matmul_gflops_bf16={r['rate_bf16']:.1f} "
                       f"{key}_matmul_gflops_sustained={r['rate_sustained']:.1f} {key}_x_bound={r['x_bound']:.2f} "
                       f"{key}_x_bound_f32={r['x_f32']:.2f} {key}_x_bound_bf16={r['x_bf16']:.2f} "
                       f"{key}_x_bound_sustained={r['x_sustained']:.2f}"
                       + (f" {key}_speedup={r['speedup']:.2f}" if len(modes) > 1 else "")
                       + (f" {key}_control_x_bound={r['control'][0]:.2f} {key}_control_x_bound_sustained="
                          f"{r['control'][1]:.2f} {key}_x_control={r['x_control']:.2f}" if "control" in r else ""))
    print(f"RESULT size={'{1}x{0}'.format(*args.size)} scale={args.scale:g} device={device.type} "
          f"amp={','.join(modes)} tile={args.tile} {' '.join(summary)}")


if __name__ == "__main__":
    main()
