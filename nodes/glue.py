"""Between ComfyUI's conventions and the gsasr core: image layout, progress and Cancel, where the work runs.

ComfyUI IMAGE tensors are (B, H, W, C) in [0, 1], float32 or float16, on ``intermediate_device()``; the core takes
(B, C, H, W). Progress goes to ``comfy.utils.ProgressBar`` (whose update also honours Cancel) and Cancel is also
checked before every network layer, so a long tile stops quickly. Weights are placed by ComfyUI's model manager
(:mod:`.managed`); the work runs where ComfyUI put them.
"""
from __future__ import annotations

import comfy.model_management as model_management
import comfy.utils
import torch

from ..gsasr import InvalidInputError
from ..gsasr.model import output_geometry
from .managed import ManagedGSASR


def to_core_layout(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) -> (B, C, H, W), same dtype; C must be 1, 3 or 4."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InvalidInputError(f"Expected a ComfyUI IMAGE of shape (batch, height, width, channels), got {shape}.")
    if image.shape[-1] not in (1, 3, 4):
        raise InvalidInputError(f"GSASR upscales images with 1, 3 or 4 channels, got {image.shape[-1]}; a mask "
                                f"can be turned into an image with the 'Convert Mask to Image' node.")
    return image.movedim(-1, 1)


def check_cancel() -> None:
    """Raises ComfyUI's interrupt exception when the user pressed Cancel (cheap: a flag under a lock)."""
    model_management.throw_exception_if_processing_interrupted()


class BatchProgress:
    """``progress(done, total)`` callbacks for the core, one per frame, driving one ComfyUI progress bar over the
    tiles of every frame of a batch."""

    def __init__(self, frames: int = 1):
        self.frames = frames
        self.frame = 0
        self.bar: comfy.utils.ProgressBar | None = None

    def __call__(self, done: int, total: int) -> None:
        value, whole = self.frame * total + done, self.frames * total  # frames are alike: same tiles each
        if self.bar is None:
            self.bar = comfy.utils.ProgressBar(whole)
        self.bar.update_absolute(value, whole)


class DownloadProgress(BatchProgress):
    """A ``progress(done_bytes, total_bytes)`` callback for model downloads; one bar per file."""

    def __call__(self, done: int, total: int) -> None:
        if self.bar is not None and (max(total, 1) != self.bar.total or done < self.bar.current):
            self.bar = None  # the next file
        super().__call__(done, max(total, 1))


def upscale(managed: ManagedGSASR, image: torch.Tensor, *, scale: float | None = None,
            size: tuple[int, int] | None = None, tile: int | None, amp: str) -> torch.Tensor:
    """``model.upscale`` on a ComfyUI IMAGE batch, frame by frame, on the device ComfyUI loads the model to.

    Each frame's result goes straight into the output on ComfyUI's intermediate device, so the compute device
    holds one frame's work at a time however long the batch (a video's frames); one progress bar counts all."""
    pixels = to_core_layout(image)
    frames, channels, height, width = pixels.shape
    out_hw = output_geometry((height, width), scale, size).out_hw  # a bad scale or size fails before loading
    managed.load(managed.work_bytes((height, width), out_hw))
    out = torch.empty((frames, *out_hw, channels), device=model_management.intermediate_device(),
                      dtype=model_management.intermediate_dtype())
    progress = BatchProgress(frames)
    for i in range(frames):
        check_cancel()
        progress.frame = i
        result = managed.model.upscale(pixels[i:i + 1], scale, size=size, tile=tile, amp=amp, progress=progress,
                                       interrupt=check_cancel)
        out[i] = result[0].movedim(0, -1)  # to the intermediate device and dtype
    return out
