"""``python -m gsasr eval``: the paper's test protocol on your own images (spec F).

For each ground-truth image:
* The LR image comes from ``--lr`` (matched by file name) or is made from the GT. Integer scale s: crop the GT to
  a multiple of s, then MATLAB-bicubic downsample. Fractional s: ``h = floor(H / s)``, the LR is the MATLAB
  downsample of the whole GT cropped to h x w, and the GT is cropped to ``floor(h s) x floor(w s)``. The LR is
  rounded to 8 bits, like a saved PNG.
* The model upscales it to the GT's size; the result is rounded to 8 bits.
* PSNR and SSIM on Y (:mod:`gsasr.metrics`), with the border crop of the scale. LPIPS (AlexNet) and DISTS are
  added only when their packages and weights are already installed: nothing is downloaded.
"""
from __future__ import annotations

import csv
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import InvalidInputError
from .imresize import imresize
from .metrics import crop_border_for, psnr_y, ssim_y, to_uint8_levels


@dataclass
class ImageResult:
    name: str
    lr_hw: tuple[int, int]
    sr_hw: tuple[int, int]
    scale: float
    psnr: float
    ssim: float
    extra: dict[str, float] = field(default_factory=dict)


def make_lr(gt: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(LR, cropped GT) for a (3, H, W) GT in [0, 1], as the paper's test sets were made; LR rounded to 8 bits."""
    _, h, w = gt.shape
    if float(scale).is_integer():
        s = int(scale)
        gt = gt[:, :h - h % s, :w - w % s]
        if min(gt.shape[-2:]) < 1:
            raise InvalidInputError(f"The image is smaller than the scale {s}.")
        lr = imresize(gt, 1 / s)
    else:
        lh, lw = math.floor(h / scale), math.floor(w / scale)
        if lh < 1 or lw < 1:
            raise InvalidInputError(f"A {h}x{w} image is too small for scale {scale}.")
        lr = imresize(gt, 1 / scale)[:, :lh, :lw]
        gt = gt[:, :math.floor(lh * scale), :math.floor(lw * scale)]
    return to_uint8_levels(lr).float() / 255.0, gt


def find_lr(gt_path: Path, lr_dir: Path) -> Path:
    """The LR file for a GT file: same stem, or the stem plus a scale suffix such as ``x4`` (BasicSR's naming)."""
    candidates = [p for p in sorted(lr_dir.iterdir()) if p.is_file()]
    for p in candidates:
        if p.stem == gt_path.stem:
            return p
    suffixed = re.compile(re.escape(gt_path.stem) + r"[_-]?[xX]\d+(\.\d+)?$")
    for p in candidates:
        if suffixed.fullmatch(p.stem):
            return p
    raise InvalidInputError(f"No LR image for {gt_path.name} in {lr_dir} (looked for {gt_path.stem}.* and "
                            f"{gt_path.stem}x<scale>.*).")


def optional_metrics(device: torch.device) -> tuple[dict[str, Callable], list[str]]:
    """LPIPS / DISTS when usable offline: {name: fn(sr01, gt01) -> float}, and notes on those that are not."""
    metrics, notes = {}, []
    for name, factory in (("LPIPS", _lpips), ("DISTS", _dists)):
        try:
            metrics[name] = factory(device)
        except Exception as exc:  # noqa: BLE001 -- a missing package or weight file only drops the column
            notes.append(f"{name} not computed: {exc}")
    return metrics, notes


def _hub_checkpoint(filename: str) -> None:
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise FileNotFoundError(f"its backbone weights {path} are not present (nothing is downloaded)")


def _lpips(device: torch.device) -> Callable:
    import lpips  # optional: pip install lpips

    _hub_checkpoint("alexnet-owt-7be5be79.pth")
    net = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
    return lambda sr, gt: net(sr[None].to(device) * 2 - 1, gt[None].to(device) * 2 - 1).item()


def _dists(device: torch.device) -> Callable:
    from DISTS_pytorch import DISTS  # optional: pip install DISTS_pytorch

    _hub_checkpoint("vgg16-397923af.pth")
    net = DISTS().to(device).eval()
    return lambda sr, gt: net(sr[None].to(device), gt[None].to(device)).item()


@torch.inference_mode()
def evaluate(model, gt_paths: list[Path], *, scale: float | None, lr_dir: Path | None, amp: str = "off",
             tile: int | None = None, save_dir: Path | None = None,
             on_result: Callable[[ImageResult], None] | None = None) -> tuple[list[ImageResult], list[str]]:
    """Run the protocol over ``gt_paths``; returns per-image results and notes (e.g. metrics left out)."""
    from .imageio import read_image, write_image

    extra_metrics, notes = optional_metrics(model.device)
    results = []
    for path in gt_paths:
        gt = _rgb(read_image(path)[0])
        if lr_dir is not None:
            lr = _rgb(read_image(find_lr(path, lr_dir))[0])
            image_scale = scale if scale is not None else gt.shape[-2] / lr.shape[-2]
        else:
            lr, gt = make_lr(gt, scale)
            image_scale = scale
        sr = model.upscale(lr[None].to(model.device), size=tuple(gt.shape[-2:]), amp=amp, tile=tile)[0].cpu()
        sr255, gt255 = to_uint8_levels(sr), to_uint8_levels(gt)
        border = crop_border_for(image_scale)
        result = ImageResult(path.stem, tuple(lr.shape[-2:]), tuple(sr.shape[-2:]), image_scale,
                             psnr_y(sr255, gt255, border), ssim_y(sr255, gt255, border))
        for name, fn in extra_metrics.items():
            c = slice(border, -border if border else None)
            result.extra[name] = fn((sr255 / 255).float()[:, c, c], (gt255 / 255).float()[:, c, c])
        if save_dir is not None:
            dst = save_dir / f"{path.stem}.png"
            if dst.exists():
                raise InvalidInputError(f"{dst} exists; choose another --save folder (nothing is overwritten).")
            save_dir.mkdir(parents=True, exist_ok=True)
            write_image((sr255 / 255).float()[None], dst)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results, notes


def _rgb(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> (3, H, W): greyscale repeated, alpha dropped (the metrics are defined on RGB)."""
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]


def summary_rows(results: list[ImageResult]) -> list[dict[str, str]]:
    """Rows for the table and the CSV: one per image, then the average."""
    extra_names = list(results[0].extra) if results else []
    rows = [{"image": r.name, "lr": f"{r.lr_hw[1]}x{r.lr_hw[0]}", "sr": f"{r.sr_hw[1]}x{r.sr_hw[0]}",
             "scale": f"{r.scale:g}", "psnr_y": f"{r.psnr:.4f}", "ssim_y": f"{r.ssim:.4f}",
             **{n.lower(): f"{r.extra[n]:.4f}" for n in extra_names}} for r in results]
    if results:
        rows.append({"image": "average", "lr": "", "sr": "", "scale": "",
                     "psnr_y": f"{statistics.fmean(r.psnr for r in results):.4f}",
                     "ssim_y": f"{statistics.fmean(r.ssim for r in results):.4f}",
                     **{n.lower(): f"{statistics.fmean(r.extra[n] for r in results):.4f}" for n in extra_names}})
    return rows


def format_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "(no images)"
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    line = lambda r: "  ".join(r[c].rjust(widths[c]) if c != "image" else r[c].ljust(widths[c]) for c in columns)  # noqa: E731
    return "\n".join([line({c: c for c in columns})] + [line(r) for r in rows])


def write_csv(rows: list[dict[str, str]], path: Path, *, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise InvalidInputError(f"{path} exists; pass --overwrite to replace it, or choose another --csv.")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
