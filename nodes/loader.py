"""LoadGSASRModel: pick a released or local GSASR model; outputs GSASR_MODEL."""
from __future__ import annotations

from . import model_folder
from .glue import DownloadProgress

GSASR_MODEL = "GSASR_MODEL"
"""Our own socket type: ComfyUI's UPSCALE_MODEL consumers assume a fixed integer scale."""


class LoadGSASRModel:
    CATEGORY = "image/upscaling"
    DESCRIPTION = ("Loads a GSASR arbitrary-scale upscaler. Released models are downloaded into models/gsasr on "
                   "first use; your own models (a folder with encoder.pth + decoder.pth, or one converted "
                   ".safetensors) in models/gsasr are listed too.")
    RETURN_TYPES = (GSASR_MODEL,)
    RETURN_NAMES = ("gsasr_model",)
    OUTPUT_TOOLTIPS = ("The loaded model, for the GSASR upscale nodes.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (model_folder.choices(), {
                "default": "EDSR_DF2K",
                "tooltip": "EDSR_* is fastest, HATL_SA1B sharpest and slowest; *_DF2K and HATL_SA1B are the "
                           "improved releases, *_paper reproduce the paper. Models not on disk are downloaded "
                           "into models/gsasr the first time."}),
        }}

    @classmethod
    def IS_CHANGED(cls, model_name):
        return model_folder.fingerprint(model_name)

    def load(self, model_name):
        return (model_folder.load(model_name, download_progress=DownloadProgress()),)
