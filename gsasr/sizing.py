"""Output sizes the way artists ask for them: "fit inside 4K", "longest side 3000", "about 8 megapixels".

Each mode turns an input size into one exact output (height, width) for ``GSASRModel.upscale(size=...)``. All
modes but ``exact`` keep the aspect ratio: the limiting side is met exactly and the other is rounded to the
nearest pixel (so the two axes differ in scale by at most half a pixel, which ``upscale`` renders exactly).
Whether the result is a valid upscale (each axis above 1x and at most 32x) is checked by ``upscale`` itself.
"""
from __future__ import annotations

import math

from .errors import InvalidInputError

SIZE_MODES = ("fit inside", "exact", "longest side", "megapixels")
"""``fit inside``: largest size within width x height with the input's aspect ratio; ``exact``: width x height
(stretches when the aspect ratio differs); ``longest side``: the longer side becomes ``longest_side`` pixels;
``megapixels``: about ``megapixels`` million pixels in total."""


def target_size(in_hw: tuple[int, int], mode: str, *, width: int = 0, height: int = 0, longest_side: int = 0,
                megapixels: float = 0.0) -> tuple[int, int]:
    """The output (height, width) for an input of ``in_hw`` under ``mode`` (one of :data:`SIZE_MODES`)."""
    h, w = (int(v) for v in in_hw)
    if h < 1 or w < 1:
        raise InvalidInputError(f"The input image is empty ({h}x{w}).")
    if mode == "exact":
        _require_positive(width=width, height=height)
        return int(height), int(width)
    if mode == "fit inside":
        _require_positive(width=width, height=height)
        scale = min(width / w, height / h)
    elif mode == "longest side":
        _require_positive(longest_side=longest_side)
        scale = longest_side / max(h, w)
    elif mode == "megapixels":
        _require_positive(megapixels=megapixels)
        scale = math.sqrt(megapixels * 1e6 / (h * w))
    else:
        raise InvalidInputError(f"mode must be one of {', '.join(SIZE_MODES)}, got {mode!r}.")
    out_h, out_w = max(1, round(h * scale)), max(1, round(w * scale))
    if mode == "fit inside":  # rounding must not step outside the box
        out_h, out_w = min(out_h, int(height)), min(out_w, int(width))
    elif mode == "longest side":  # the longer side exactly, whatever the rounding of the scale
        if h >= w:
            out_h = int(longest_side)
        if w >= h:
            out_w = int(longest_side)
    return out_h, out_w


def _require_positive(**values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise InvalidInputError(f"{name} must be a positive number, got {value!r}.")
