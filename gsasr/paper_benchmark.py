"""``python -m gsasr bench-paper``: the paper's cost protocol (spec E), on this machine.

* Ground truths are 720 x 720 crops: random crops (fixed seed) of the images in ``--gt``, or, without it,
  synthetic images (smooth colour fields with edges and texture; say so when quoting numbers).
* The LR image is the MATLAB-bicubic downsample (rounded to 8 bits); the whole image goes through without tiling.
* Timed: encoder + decoder + rendering, between device synchronisations. Padding and I/O are not timed.
* Memory: on CUDA, the peak allocated between ``reset_peak_memory_stats()`` and the end of the image, so it
  includes the resident weights. On a CPU the process's peak resident set is all the OS reports, and it cannot be
  reset: it only grows, and includes the Python process.
* dmax is 0.05 at x2 and 0.1 otherwise, as in the official benchmark script. The first two images are left out
  of the averages (warm-up).
"""
from __future__ import annotations

import math
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InvalidInputError
from .evaluation import make_lr
from .model import output_geometry

GT_SIDE = 720
WARMUP_IMAGES = 2


def dmax_for(scale: float) -> float:
    return 0.05 if scale == 2 else 0.1


def synthetic_ground_truths(count: int, seed: int = 0) -> list[torch.Tensor]:
    """Reproducible 720 x 720 stand-ins for DIV2K crops: smooth colour, hard edges and fine texture."""
    gen = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(count):
        coarse = torch.rand(1, 3, 6, 6, generator=gen)
        smooth = torch.nn.functional.interpolate(coarse, size=(GT_SIDE, GT_SIDE), mode="bicubic", align_corners=False)
        yy, xx = torch.meshgrid(torch.arange(GT_SIDE), torch.arange(GT_SIDE), indexing="ij")
        angle = torch.rand(1, generator=gen).item() * math.pi
        edges = ((xx * math.cos(angle) + yy * math.sin(angle)) // 90 % 2).float()
        texture = 0.08 * torch.randn(1, 1, GT_SIDE, GT_SIDE, generator=gen)
        images.append((0.7 * smooth + 0.3 * edges + texture).clamp(0, 1)[0])
    return images


def cropped_ground_truths(paths: list[Path], seed: int = 0) -> list[torch.Tensor]:
    """One random 720 x 720 crop of each image (smaller images are skipped, with a message)."""
    from .imageio import read_image

    gen = torch.Generator().manual_seed(seed)
    crops = []
    for path in paths:
        image = read_image(path)[0]
        image = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
        h, w = image.shape[-2:]
        if h < GT_SIDE or w < GT_SIDE:
            print(f"skipped {path.name}: {w}x{h} is smaller than {GT_SIDE}x{GT_SIDE}", file=sys.stderr)
            continue
        y = int(torch.randint(0, h - GT_SIDE + 1, (1,), generator=gen))
        x = int(torch.randint(0, w - GT_SIDE + 1, (1,), generator=gen))
        crops.append(image[:, y:y + GT_SIDE, x:x + GT_SIDE])
    return crops


@dataclass
class ScaleCost:
    scale: float
    lr_hw: tuple[int, int]
    sr_hw: tuple[int, int]
    times_ms: list[float]
    peak_bytes: list[int]

    def measured(self) -> tuple[list[float], list[int]]:
        keep = slice(WARMUP_IMAGES, None) if len(self.times_ms) > WARMUP_IMAGES else slice(None)
        return self.times_ms[keep], self.peak_bytes[keep]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes


@torch.inference_mode()
def measure(model, ground_truths: list[torch.Tensor], scale: float, *, amp: str = "off") -> ScaleCost:
    """Time and memory of encoder + decoder + render for each GT at ``scale``."""
    if len(ground_truths) <= WARMUP_IMAGES:
        raise InvalidInputError(f"bench-paper needs more than {WARMUP_IMAGES} images (the first {WARMUP_IMAGES} "
                                f"are warm-up), got {len(ground_truths)}.")
    device = model.device
    cost = None
    for gt in ground_truths:
        lr, gt = make_lr(gt, scale)
        geometry = output_geometry(tuple(lr.shape[-2:]), scale)
        padded = model._pad(lr[None])  # not timed, as in the official script
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _synchronize(device)
        start = time.perf_counter()
        gaussians = model._networks(padded, geometry.condition_scale, amp)[0]
        sr = model.render(gaussians, tuple(lr.shape[-2:]), geometry, dmax=dmax_for(scale))
        _synchronize(device)
        elapsed = (time.perf_counter() - start) * 1000
        if cost is None:
            cost = ScaleCost(scale, tuple(lr.shape[-2:]), tuple(sr.shape[-2:]), [], [])
        cost.times_ms.append(elapsed)
        cost.peak_bytes.append(_peak_bytes(device))
        del gaussians, sr, padded
    return cost


def format_report(costs: list[ScaleCost], header: str) -> str:
    lines = [header, f"{'scale':>6} {'LR':>9} {'SR':>9} {'images':>6} {'mean ms':>10} {'median ms':>10} "
                     f"{'p90 ms':>10} {'peak MiB':>9}"]
    result = []
    for c in costs:
        times, peaks = c.measured()
        p90 = sorted(times)[max(0, math.ceil(0.9 * len(times)) - 1)]
        peak = max(peaks) / 2**20
        lines.append(f"{c.scale:>6g} {c.lr_hw[1]:>4}x{c.lr_hw[0]:<4} {c.sr_hw[1]:>4}x{c.sr_hw[0]:<4} {len(times):>6} "
                     f"{statistics.fmean(times):>10.1f} {statistics.median(times):>10.1f} {p90:>10.1f} {peak:>9.0f}")
        result.append(f"x{c.scale:g}_ms={statistics.fmean(times):.1f} x{c.scale:g}_peak_mib={peak:.0f}")
    lines.append("RESULT " + " ".join(result))
    return "\n".join(lines)
