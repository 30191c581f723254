"""How much reduced precision (amp) changes GSASR's output, per architecture, on the golden weights and inputs.

    python bench/amp_report.py                       # every architecture, bf16 and fp16, on the best device
    python bench/amp_report.py --archs EDSR_DIV2K --modes bf16 --device cpu

For every golden case (../shared/golden, else the compact copy in tests/golden) the model runs in float32 and
with ``amp=<mode>`` (autocast of the networks; rendering always sums in float32). Reported per architecture and
mode, worst case over its golden cases: the Gaussians' relative error (max |amp - fp32| / max |fp32| over each
parameter column), and on the clamped SR images the max abs difference, the share of pixels that differ by more
than one 8-bit level, and the PSNR of amp against float32.
Untrained (golden-rule) weights exaggerate differences where Gaussians are near-degenerate (see
tests/core/test_golden_parity.py), so these are upper bounds for trained models rather than their values.
Prints an environment header, a table and a last line ``RESULT key=value ...``.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch
from _environment import environment_header  # bench/ is on sys.path when a benchmark runs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import gsasr  # noqa: E402
from gsasr.model import output_geometry  # noqa: E402
from gsasr.render import active_backend  # noqa: E402

ARCHS = ["EDSR", "RDN", "SWIN", "EDSR_DIV2K", "RDN_DIV2K", "SWIN_DIV2K", "HATL_SA1B"]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


@torch.inference_mode()
def compare(model, case: dict, mode: str, device: torch.device) -> dict:
    lr = torch.from_numpy(case["lr"]).to(device)
    scale = case["scale"]
    gs32, gs_amp = model.gaussians(lr, scale, amp="off"), model.gaussians(lr, scale, amp=mode)
    column_err = (gs_amp - gs32).abs().amax(dim=(0, 1)) / gs32.abs().amax(dim=(0, 1)).clamp_min(1e-12)
    # The SR images from these Gaussians (what upscale(tile=0) draws), not a second run of the networks: reduced
    # precision on a CPU can be very slow (fp16 convolutions have no fast kernel there).
    in_hw = tuple(lr.shape[-2:])
    geometry = output_geometry(in_hw, scale)
    sr32, sr_amp = (model.render(gs[0], in_hw, geometry).clamp(0, 1) for gs in (gs32, gs_amp))
    diff = (sr_amp - sr32).abs()
    return {"gs_rel": column_err.max().item(), "sr_max_abs": diff.max().item(), "psnr": psnr(sr_amp, sr32),
            "off_pct": 100 * (diff > 1 / 255).float().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=ARCHS, choices=ARCHS)
    parser.add_argument("--modes", nargs="+", default=["bf16", "fp16"], choices=["bf16", "fp16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    from conftest import golden_folder, load_golden

    golden = load_golden()
    print(environment_header(device, active_backend(device)))
    print(f"# golden data: {golden_folder()}; networks autocast to the mode, rendering in float32")
    print(f"{'arch':<11} {'mode':<5} {'cases':>5} {'gs rel err':>11} {'SR max abs':>11} {'>1/255 %':>9} "
          f"{'SR PSNR dB':>11}")
    result = []
    for arch in args.archs:
        cases = golden.cases(arch, str(golden_folder()))
        if not cases:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            model = gsasr.load_model(golden.write_official_checkpoint(arch, tmp), device=device)
        for mode in args.modes:
            rows = [compare(model, case, mode, device) for case in cases]
            worst = {"gs_rel": max(r["gs_rel"] for r in rows), "sr_max_abs": max(r["sr_max_abs"] for r in rows),
                     "off_pct": max(r["off_pct"] for r in rows), "psnr": min(r["psnr"] for r in rows)}
            print(f"{arch:<11} {mode:<5} {len(rows):>5} {worst['gs_rel']:>11.2e} {worst['sr_max_abs']:>11.4f} "
                  f"{worst['off_pct']:>9.2f} {worst['psnr']:>11.2f}", flush=True)
            result.append(f"{arch}_{mode}_psnr={worst['psnr']:.2f}")
        del model
    print("RESULT device=" + device.type + " " + " ".join(result))


if __name__ == "__main__":
    main()
