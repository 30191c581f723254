"""Between ComfyUI's conventions and the gsasr core: image layout, progress and Cancel, device placement.

ComfyUI IMAGE tensors are (B, H, W, C) in [0, 1], float32 or float16, on ``intermediate_device()``; the core takes
(B, C, H, W). Progress goes to ``comfy.utils.ProgressBar`` (whose update also honours Cancel) and Cancel is also
checked before every network layer, so a long tile stops quickly. The model lives on ComfyUI's offload device
between runs; for a run it is moved to the torch device after ComfyUI has freed room for it, and moved back after.
"""
from __future__ import annotations

import torch

import comfy.model_management as model_management
import comfy.utils

from ..gsasr import GSASRModel, InvalidInputError
MAX_WORK_BYTES = 2 * 2**30
"""The most working memory we ask ComfyUI to free for a run: a big image is tiled to fit what is free, so asking
for its whole untiled need would only unload every other model for nothing."""


def to_core_layout(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) -> (B, C, H, W), same dtype; C must be 1, 3 or 4."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InvalidInputError(f"Expected a ComfyUI IMAGE of shape (batch, height, width, channels), got {shape}.")
    if image.shape[-1] not in (1, 3, 4):
        raise InvalidInputError(f"GSASR upscales images with 1, 3 or 4 channels, got {image.shape[-1]}; a mask "
                                f"can be turned into an image with the 'Convert Mask to Image' node.")
    return image.movedim(-1, 1)


def to_comfy_image(image: torch.Tensor) -> torch.Tensor:
    """Core output (B, C, H, W) -> ComfyUI IMAGE (B, H, W, C), contiguous, on the intermediate device and dtype."""
    out = image.movedim(1, -1).to(device=model_management.intermediate_device(),
                                  dtype=model_management.intermediate_dtype())
    return out.contiguous()


def check_cancel() -> None:
    """Raises ComfyUI's interrupt exception when the user pressed Cancel (cheap: a flag under a lock)."""
    model_management.throw_exception_if_processing_interrupted()


class TileProgress:
    """A ``progress(done, total)`` callback for the core that drives one ComfyUI progress bar."""

    def __init__(self):
        self.bar: comfy.utils.ProgressBar | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = comfy.utils.ProgressBar(total)
        self.bar.update_absolute(done, total)


class DownloadProgress(TileProgress):
    """A ``progress(done_bytes, total_bytes)`` callback for model downloads; one bar per file."""

    def __call__(self, done: int, total: int) -> None:
        if self.bar is not None and (total != self.bar.total or done < self.bar.current):
            self.bar = None  # the next file
        super().__call__(done, max(total, 1))


def upscale(model: GSASRModel, image: torch.Tensor, *, scale: float | None = None,
            size: tuple[int, int] | None = None, tile: int | None, amp: str) -> torch.Tensor:
    """Run ``model.upscale`` on a ComfyUI IMAGE on ComfyUI's torch device; returns a ComfyUI IMAGE."""
    pixels = to_core_layout(image)
    device = model_management.get_torch_device()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if device.type != "cpu":
        # Let ComfyUI unload other models to make room for ours and one image's work; the core then sizes its
        # tiles from what is free, and retries smaller ones if that was not enough.
        work = pixels.shape[-2] * pixels.shape[-1] * model.bytes_per_lr_pixel()
        model_management.free_memory(weights + min(work, MAX_WORK_BYTES), device)
    model.to(device)
    try:
        check_cancel()
        out = model.upscale(pixels, scale, size=size, tile=tile, amp=amp, progress=TileProgress(),
                            interrupt=check_cancel)
        return to_comfy_image(out)
    finally:
        model.to(model_management.unet_offload_device())
        model_management.soft_empty_cache()
