"""Image files <-> tensors for the CLI (Pillow). Colour stays 8-bit sRGB; alpha and greyscale are kept."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """(1, C, H, W) float32 in [0, 1]: C = 1 for greyscale, 3 for colour, 4 when the file has transparency."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)  # phones store rotation in EXIF; upscale what the user sees
        has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
        if has_alpha:
            im = im.convert("RGBA")
        elif im.mode in ("L", "1"):
            im = im.convert("L")
        elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float32) / 65535.0
            return torch.from_numpy(np.clip(arr, 0, 1))[None, None].contiguous()
        else:
            im = im.convert("RGB")
        arr = np.asarray(im, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def write_image(image: torch.Tensor, path: str | os.PathLike) -> None:
    """Write a (1, C, H, W) or (C, H, W) float image in [0, 1]; written to a temporary name, then renamed."""
    from PIL import Image

    path = Path(path)
    if image.dim() == 4:
        image = image[0]
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
    if arr.shape[2] == 1:
        im = Image.fromarray(arr[:, :, 0], "L")
    else:
        im = Image.fromarray(arr, "RGBA" if arr.shape[2] == 4 else "RGB")
    if fmt == "JPEG" and im.mode == "RGBA":
        im = im.convert("RGB")  # JPEG has no alpha channel
    tmp = path.with_name(f".{path.name}.partial")
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    im.save(tmp, format=fmt, **options)
    os.replace(tmp, path)
