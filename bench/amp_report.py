"""How much reduced precision (amp) changes GSASR's output, per architecture, on the golden weights and inputs.

    python bench/amp_report.py                       # every architecture; bf16 (and fp16 on a GPU)
    python bench/amp_report.py --archs EDSR_DIV2K --modes bf16 --device cpu

For every golden case of the conditioned set (``conditioned/`` of ../shared/golden, else of the compact copy in
tests/golden; the plain set where neither has it, with a note) the model runs in float32 and with ``amp=<mode>``
(model.precision: autocast of the networks, weights cast once on a CPU; rendering always sums in float32). The
conditioned weights keep the Gaussians away from degenerate shapes, so the image responds smoothly to them; on the
plain weights one float32 rounding already moves pixels by up to 0.33 (../shared/golden/README.md), which says
nothing about a precision. Reported per architecture and mode, worst case over its golden cases: the Gaussians'
relative error (max |amp - fp32| / max |fp32| over each parameter column); on the unclamped SR images the PSNR of
amp against float32 over the float32 image's range (max - min: untrained weights' outputs are not in [0, 1]); on
the clamped images the max abs difference, the share of pixels more than one 8-bit level apart, and the PSNR with
peak 1. Untrained weights still make larger differences than trained models would, so these are upper bounds.
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


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> float:
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


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
    sr32, sr_amp = (model.render(gs[0], in_hw, geometry) for gs in (gs32, gs_amp))
    value_range = (sr32.max() - sr32.min()).item()
    clamped32, clamped_amp = sr32.clamp(0, 1), sr_amp.clamp(0, 1)
    diff = (clamped_amp - clamped32).abs()
    return {"gs_rel": column_err.max().item(), "psnr_range": psnr(sr_amp, sr32, value_range),
            "sr_max_abs": diff.max().item(), "psnr": psnr(clamped_amp, clamped32),
            "off_pct": 100 * (diff > 1 / 255).float().mean().item()}


def golden_cases(golden, arch: str, folder: Path) -> list[dict]:
    """The conditioned cases of ``folder`` when it has them, else its plain ones."""
    conditioned = folder / "conditioned"
    return golden.cases(arch, str(conditioned if conditioned.is_dir() else folder))


def load_for(golden, arch: str, rule: str, device: torch.device):
    with tempfile.TemporaryDirectory() as tmp:
        # golden.py without rules (an older compact copy) only writes the plain weights
        written = (golden.write_official_checkpoint(arch, tmp) if rule == "plain"
                   else golden.write_official_checkpoint(arch, tmp, rule))
        return gsasr.load_model(written, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=ARCHS, choices=ARCHS)
    parser.add_argument("--modes", nargs="+", default=None, choices=["bf16", "fp16", "auto"],
                        help="default: bf16 and fp16 on a GPU, bf16 on a CPU (fp16 has no fast CPU kernels)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    modes = args.modes or (["bf16"] if device.type == "cpu" else ["bf16", "fp16"])
    from conftest import golden_folder, load_golden

    golden = load_golden()
    folder = golden_folder()
    set_name = "conditioned" if (folder / "conditioned").is_dir() else "plain (no conditioned set found)"
    print(environment_header(device, active_backend(device)))
    print(f"# golden data: {folder}, {set_name} set; networks in the amp mode, rendering in float32; worst case over "
          f"each architecture's cases")
    print(f"{'arch':<11} {'mode':<5} {'rule':<11} {'cases':>5} {'gs rel err':>11} {'PSNR range dB':>13} "
          f"{'SR max abs':>11} {'>1/255 %':>9} {'SR PSNR dB':>11}")
    result = []
    for arch in args.archs:
        cases = golden_cases(golden, arch, folder)
        if not cases:
            continue
        rule = cases[0].get("rule", "plain")
        model = load_for(golden, arch, rule, device)
        for mode in modes:
            rows = [compare(model, case, mode, device) for case in cases]
            worst = {"gs_rel": max(r["gs_rel"] for r in rows), "sr_max_abs": max(r["sr_max_abs"] for r in rows),
                     "off_pct": max(r["off_pct"] for r in rows), "psnr": min(r["psnr"] for r in rows),
                     "psnr_range": min(r["psnr_range"] for r in rows)}
            print(f"{arch:<11} {mode:<5} {rule:<11} {len(rows):>5} {worst['gs_rel']:>11.2e} "
                  f"{worst['psnr_range']:>13.2f} {worst['sr_max_abs']:>11.4f} {worst['off_pct']:>9.2f} "
                  f"{worst['psnr']:>11.2f}", flush=True)
            result.append(f"{arch}_{mode}_psnr_range={worst['psnr_range']:.2f} {arch}_{mode}_psnr={worst['psnr']:.2f}")
        del model
    print(f"RESULT device={device.type} rule={'conditioned' if 'conditioned' in set_name else 'plain'} "
          + " ".join(result))


if __name__ == "__main__":
    main()
