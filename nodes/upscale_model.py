"""GSASRUpscaleModel ("GSASR as Upscale Model"): a GSASR model at one chosen scale, as ComfyUI's UPSCALE_MODEL.

ComfyUI's "Upscale Image (using Model)" and the nodes built on it (UltimateSDUpscale, detailers, hires fixes) take
an UPSCALE_MODEL and use three things of it: ``.patcher``, which they load with ``load_models_gpu``; ``.scale``; and
a call on (B, C, h, w) float tiles that must return (B, C, round(scale h), round(scale w)), since
``comfy.utils.tiled_scale`` allocates its output and places tiles by rounding. The core's ``size=(h, w)`` renders
exactly that size, so GSASR's arbitrary scales fit.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..gsasr import InvalidInputError
from . import glue
from .loader import SEARCH_ALIASES
from .managed import ManagedGSASR
from .upscale import amp_input, model_input, scale_input


class GSASRAsUpscaleModel:
    """What UPSCALE_MODEL consumers call: ``model(tiles)`` -> tiles enlarged by ``model.scale``, rounded."""

    def __init__(self, managed: ManagedGSASR, scale: float, amp: str):
        self.managed = managed
        self.patcher = managed.patcher
        self.scale = float(scale)
        self.amp = amp

    def __repr__(self) -> str:
        return f"GSASRAsUpscaleModel({self.managed.model!r}, scale={self.scale:g}, amp={self.amp})"

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        h, w = tiles.shape[-2:]
        out_hw = (round(self.scale * h), round(self.scale * w))  # what tiled_scale allocates for it
        if out_hw[0] <= h or out_hw[1] <= w:
            raise InvalidInputError(f"x{self.scale:g} does not enlarge a {w}x{h} tile once rounded to whole pixels "
                                    f"(GSASR only enlarges): use a larger scale in GSASR as Upscale Model.")
        # The caller loaded the patcher for its tiles (ImageUpscaleWithModel does); a caller that did not gets it
        # loaded here, so the weights are never used from where ComfyUI offloaded them.
        self.managed.ensure_loaded(self.managed.work_bytes((h, w), out_hw))
        return self.managed.model.upscale(tiles, size=out_hw, amp=self.amp, interrupt=glue.check_cancel)


class GSASRUpscaleModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GSASRUpscaleModel",
            display_name="GSASR as Upscale Model",
            category="image/upscaling",
            search_aliases=["upscale model", "UPSCALE_MODEL", "for ultimate sd upscale", "hires fix upscaler",
                            *SEARCH_ALIASES],
            description="Makes the GSASR model an UPSCALE_MODEL at the scale you choose, for \"Upscale Image "
                        "(using Model)\" and the nodes built on it (UltimateSDUpscale, detailers, hires fixes). "
                        "They tile the image themselves (512-pixel tiles, blended overlaps); the GSASR Upscale "
                        "nodes tile without any seam and are the better choice when you only need the upscale.",
            inputs=[
                model_input(),
                scale_input("Upscaling factor of this upscale model; any value, not only whole numbers."),
                amp_input(),
            ],
            outputs=[io.UpscaleModel.Output(
                display_name="upscale_model",
                tooltip="GSASR at this scale, for any node taking an UPSCALE_MODEL.")],
        )

    @classmethod
    def execute(cls, gsasr_model: ManagedGSASR, scale: float, amp: str) -> io.NodeOutput:
        return io.NodeOutput(GSASRAsUpscaleModel(gsasr_model, scale, amp))
