"""GSASRUpscale (by a factor) and GSASRUpscaleToSize (to a size artists name): IMAGE in, IMAGE out."""
from __future__ import annotations

from ..gsasr.model import AMP_MODES
from ..gsasr.sizing import SIZE_MODES, target_size
from . import glue
from .loader import GSASR_MODEL

MAX_SCALE = 30.0        # the largest scale the paper evaluates
MAX_SIDE = 16384        # ComfyUI's own MAX_RESOLUTION
AMP_CHOICES = ("auto",) + tuple(m for m in AMP_MODES if m != "auto")

COMMON_INPUTS = {
    "tile_size": ("INT", {
        "default": 0, "min": 0, "max": 4096, "step": 8,
        "tooltip": "0 = automatic: the whole image when it fits in memory, otherwise tiles sized to the free "
                   "memory. A number runs the networks on tiles of that many input pixels (lower it if you run "
                   "out of memory). Tiles never leave seams: they are joined before rendering, and out-of-memory "
                   "errors are retried with smaller tiles."}),
    "amp": (AMP_CHOICES, {
        "default": "auto",
        "tooltip": "Reduced precision for the networks: auto = bf16 on recent NVIDIA GPUs, fp16 on older ones and "
                   "Apple, off on CPU. Faster and lighter on GPUs; off gives the exact official result. On a CPU "
                   "keep auto or off: fp16 there is many times slower."}),
}


def _inputs(**specific):
    return {"required": {
        "gsasr_model": (GSASR_MODEL, {"tooltip": "From the Load GSASR Model node."}),
        "image": ("IMAGE", {"tooltip": "Images to upscale (a batch is upscaled image by image; alpha is kept)."}),
        **specific, **COMMON_INPUTS}}


class GSASRUpscale:
    CATEGORY = "image/upscaling"
    DESCRIPTION = "Upscales images by any factor (x1.5, x3.7, x12 ...) with GSASR."
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The upscaled images: floor(scale x width) by floor(scale x height).",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        return _inputs(scale=("FLOAT", {
            "default": 4.0, "min": 1.01, "max": MAX_SCALE, "step": 0.01,
            "tooltip": "Upscaling factor; any value, not only whole numbers."}))

    def upscale(self, gsasr_model, image, scale, tile_size, amp):
        return (glue.upscale(gsasr_model, image, scale=scale, tile=tile_size or None, amp=amp),)


class GSASRUpscaleToSize:
    CATEGORY = "image/upscaling"
    DESCRIPTION = ("Upscales images to a size: fit inside width x height (e.g. 3840 x 2160 for 4K), exactly "
                   "width x height, a longest side, or a number of megapixels.")
    RETURN_TYPES = ("IMAGE", "INT", "INT")
    RETURN_NAMES = ("image", "width", "height")
    OUTPUT_TOOLTIPS = ("The upscaled images.", "Their width.", "Their height.")
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        side = {"min": 1, "max": MAX_SIDE, "step": 1}
        return _inputs(
            mode=(SIZE_MODES, {"default": "fit inside", "tooltip":
                  "fit inside: as large as fits in width x height, keeping the aspect ratio. exact: width x "
                  "height, stretching if the aspect ratio differs. longest side: the longer side becomes "
                  "longest_side. megapixels: about that many million pixels, keeping the aspect ratio."}),
            width=("INT", {"default": 3840, **side, "tooltip": "Target width (fit inside, exact)."}),
            height=("INT", {"default": 2160, **side, "tooltip": "Target height (fit inside, exact)."}),
            longest_side=("INT", {"default": 3840, **side, "tooltip": "Target longer side (longest side)."}),
            megapixels=("FLOAT", {"default": 8.3, "min": 0.01, "max": 256.0, "step": 0.01,
                                  "tooltip": "Target size in millions of pixels (megapixels)."}))

    def upscale(self, gsasr_model, image, mode, width, height, longest_side, megapixels, tile_size, amp):
        out_h, out_w = target_size((image.shape[1], image.shape[2]), mode, width=width, height=height,
                                   longest_side=longest_side, megapixels=megapixels)
        out = glue.upscale(gsasr_model, image, size=(out_h, out_w), tile=tile_size or None, amp=amp)
        return (out, out_w, out_h)
