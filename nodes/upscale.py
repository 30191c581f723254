"""GSASRUpscale (by a factor) and GSASRUpscaleToSize (to a size artists name): IMAGE in, IMAGE out."""
from __future__ import annotations

from comfy_api.latest import io

from ..gsasr.model import AMP_MODES
from ..gsasr.sizing import SIZE_MODES, target_size
from . import glue
from .loader import SEARCH_ALIASES, GSASRModel

MAX_SCALE = 30.0        # the largest scale the paper evaluates
MAX_SIDE = 16384        # ComfyUI's own MAX_RESOLUTION
AMP_CHOICES = ["auto"] + [m for m in AMP_MODES if m != "auto"]
AMP_TOOLTIP = ("Reduced precision for the networks: auto = bf16 on recent NVIDIA GPUs and on CPUs with native bf16 "
               "(AMX or AVX512-BF16), fp16 on older NVIDIA GPUs and Apple, off on other CPUs. Faster and lighter; "
               "off gives the exact official result. On a CPU keep auto or off: fp16 there is many times slower.")


def model_input() -> io.Input:
    return GSASRModel.Input("gsasr_model", tooltip="From the Load GSASR Model node.")


def scale_input(tooltip: str) -> io.Input:
    return io.Float.Input("scale", default=4.0, min=1.01, max=MAX_SCALE, step=0.01, tooltip=tooltip)


def amp_input() -> io.Input:
    return io.Combo.Input("amp", options=AMP_CHOICES, default="auto", tooltip=AMP_TOOLTIP)


def _inputs(*specific: io.Input) -> list[io.Input]:
    return [
        model_input(),
        io.Image.Input("image", tooltip="Images to upscale: a batch (e.g. a video's frames) is upscaled frame by "
                                        "frame; alpha is kept."),
        *specific,
        io.Int.Input(
            "tile_size", default=0, min=0, max=4096, step=8,
            tooltip="0 = automatic: the whole image when it fits in memory, otherwise tiles sized to the free "
                    "memory. A number runs the networks on tiles of that many input pixels (lower it if you run "
                    "out of memory). Tiles never leave seams: they are joined before rendering, and out-of-memory "
                    "errors are retried with smaller tiles."),
        amp_input(),
    ]


class GSASRUpscale(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GSASRUpscale",
            display_name="GSASR Upscale (by factor)",
            category="image/upscaling",
            search_aliases=["upscale by", "scale by", "resize by factor", *SEARCH_ALIASES],
            description="Upscales images by any factor (x1.5, x3.7, x12 ...) with GSASR.",
            inputs=_inputs(scale_input("Upscaling factor; any value, not only whole numbers.")),
            outputs=[io.Image.Output(
                tooltip="The upscaled images: floor(scale x width) by floor(scale x height).")],
        )

    @classmethod
    def execute(cls, gsasr_model, image, scale: float, tile_size: int, amp: str) -> io.NodeOutput:
        return io.NodeOutput(glue.upscale(gsasr_model, image, scale=scale, tile=tile_size or None, amp=amp))


class GSASRUpscaleToSize(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        side = {"min": 1, "max": MAX_SIDE, "step": 1}
        return io.Schema(
            node_id="GSASRUpscaleToSize",
            display_name="GSASR Upscale to Size",
            category="image/upscaling",
            search_aliases=["upscale to size", "resize to", "2160p", "UHD", "video upscale",
                            *SEARCH_ALIASES],
            description="Upscales images to a size: fit inside width x height (e.g. 3840 x 2160 for 4K), exactly "
                        "width x height, a longest side, or a number of megapixels.",
            inputs=_inputs(
                io.Combo.Input(
                    "mode", options=list(SIZE_MODES), default="fit inside",
                    tooltip="fit inside: as large as fits in width x height, keeping the aspect ratio. exact: width "
                            "x height, stretching if the aspect ratio differs. longest side: the longer side "
                            "becomes longest_side. megapixels: about that many million pixels, keeping the aspect "
                            "ratio."),
                io.Int.Input("width", default=3840, **side, tooltip="Target width (fit inside, exact)."),
                io.Int.Input("height", default=2160, **side, tooltip="Target height (fit inside, exact)."),
                io.Int.Input("longest_side", default=3840, **side, tooltip="Target longer side (longest side)."),
                io.Float.Input("megapixels", default=8.3, min=0.01, max=256.0, step=0.01,
                               tooltip="Target size in millions of pixels (megapixels)."),
            ),
            outputs=[io.Image.Output(display_name="image", tooltip="The upscaled images."),
                     io.Int.Output(display_name="width", tooltip="Their width."),
                     io.Int.Output(display_name="height", tooltip="Their height.")],
        )

    @classmethod
    def execute(cls, gsasr_model, image, mode: str, width: int, height: int, longest_side: int, megapixels: float,
                tile_size: int, amp: str) -> io.NodeOutput:
        out_h, out_w = target_size((image.shape[1], image.shape[2]), mode, width=width, height=height,
                                   longest_side=longest_side, megapixels=megapixels)
        out = glue.upscale(gsasr_model, image, size=(out_h, out_w), tile=tile_size or None, amp=amp)
        return io.NodeOutput(out, out_w, out_h)
