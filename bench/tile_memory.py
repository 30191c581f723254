"""Peak activation memory per LR pixel of encoder + decoder, chunked (as shipped) against unchunked.

    python bench/tile_memory.py --sizes 96 144 --chunked-sizes 252 324 --self-blocks 1
    python bench/tile_memory.py --device cuda --amp auto --sizes 192 256 --chunked-sizes 512 768

Each measurement runs in a fresh process (CPU, float32, random weights of the real EDSR + enhanced decoder
shapes) and reads the kernel's peak resident set (VmHWM) before and after one forward pass, so it counts every
allocation, PyTorch's own included. Unchunked = every attention layer on all windows at once and UPNet + heads
on all Gaussians at once, whole-image activations as the official code has them. ``--self-blocks`` lowers the
decoder's depth to save time: activations are freed layer by layer, so peak memory depends on the width, not the
depth. The per-pixel figure is the slope between the two sizes (it removes the fixed per-chunk buffers) and the
peak divided by the pixels at the largest size. The chunked model is measured at larger sizes
(``--chunked-sizes``): its CPU chunk caps (2^13 Gaussians through the heads, 2^12 seeds through an attention
layer) must be reached at both sizes for the slope to be the per-pixel cost of a big image, and below them every
chunk is simply the whole image. The unchunked model grows linearly from the start, so small sizes measure it
(large ones would not fit in memory).

``--device cuda`` measures PyTorch's peak allocated CUDA memory during the forward pass instead (beyond what was
allocated before it: weights and input), with ``--amp`` autocast as ``model.upscale`` would use. There the
decoder's accelerator chunk caps are 2^17 Gaussians and 2^17 seeds (362^2), so the chunked sizes must be larger.
This is the figure behind ``gsasr.tiling.BYTES_PER_LR_PIXEL``, which sizes automatic tiles.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _hwm_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _child(size: int, chunked: bool, self_blocks: int, device: str, amp: str) -> None:
    sys.path.insert(0, str(REPO))
    import contextlib

    import torch

    from gsasr.archs.decoder import GaussianDecoder
    from gsasr.archs.encoder_edsr import EDSREncoder
    from gsasr.model import resolve_amp

    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    enc, dec = EDSREncoder().eval().to(device), GaussianDecoder(num_selfattn_blocks=self_blocks).eval().to(device)
    if not chunked:
        dec.max_gaussians_per_chunk = 1 << 40  # one chunk: whole-image activations, as in the official model
        dec.max_tokens_per_chunk = 1 << 40
        os.environ["GSASR_WINOGRAD"] = "0"  # and direct convolutions, whose only intermediate is the output
    x = torch.rand(1, 3, size, size, device=device)
    amp_dtype = resolve_amp(amp, torch.device(device))
    autocast = (torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _hwm_bytes()
    with torch.inference_mode(), autocast:
        dec(enc(x), 4.0)
    peak = torch.cuda.max_memory_allocated() - before if cuda else _hwm_bytes() - before
    print(json.dumps({"size": size, "chunked": chunked, "peak": peak}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs=2, default=[96, 144], help="LR sides for the unchunked model")
    parser.add_argument("--chunked-sizes", type=int, nargs=2, default=[252, 324],
                        help="LR sides for the chunked model (large enough to reach its chunk caps)")
    parser.add_argument("--self-blocks", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu (peak resident set) or cuda (peak allocated)")
    parser.add_argument("--amp", default="off", help="autocast mode, as model.upscale(amp=...)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(int(args.child[0]), args.child[1] == "1", int(args.child[2]), args.device, args.amp)
        return
    import torch
    from _environment import environment_header  # bench/ is on sys.path when a benchmark runs

    print(environment_header(torch.device(args.device), "none (networks only)"))
    print(f"# {'peak allocated CUDA memory' if args.device.startswith('cuda') else 'peak resident set'}, "
          f"amp {args.amp}")
    result = {}
    for chunked in (True, False):
        peaks = []
        sizes = args.chunked_sizes if chunked else args.sizes
        for size in sizes:
            out = subprocess.run([sys.executable, __file__, "--child", str(size), str(int(chunked)),
                                  str(args.self_blocks), "--device", args.device, "--amp", args.amp],
                                 capture_output=True, text=True, check=True)
            peaks.append(json.loads(out.stdout)["peak"])
        (a, b), (pa, pb) = sizes, peaks
        slope = (pb - pa) / (b * b - a * a)
        name = "chunked" if chunked else "unchunked"
        result[name] = slope
        print(f"{name:9s}: peak {pa / 2**20:.0f} MiB at {a}x{a}, {pb / 2**20:.0f} MiB at {b}x{b}; "
              f"{slope / 1024:.1f} KiB per LR pixel (slope), {pb / (b * b) / 1024:.1f} KiB/px at {b}x{b}")
    print(f"RESULT device={args.device} amp={args.amp} chunked_kib_per_px={result['chunked'] / 1024:.1f} "
          f"unchunked_kib_per_px={result['unchunked'] / 1024:.1f} "
          f"ratio={result['unchunked'] / result['chunked']:.1f}")


if __name__ == "__main__":
    main()
