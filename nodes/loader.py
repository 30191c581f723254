"""LoadGSASRModel: pick a released or local GSASR model; outputs GSASR_MODEL."""
from __future__ import annotations

from comfy_api.latest import io

from . import model_folder
from .glue import DownloadProgress

GSASRModel = io.Custom("GSASR_MODEL")
"""Our own socket type: ComfyUI's UPSCALE_MODEL consumers assume one fixed scale (GSASR as Upscale Model makes
one when they are wanted)."""

SEARCH_ALIASES = ["super resolution", "upscale", "upscaler", "arbitrary scale", "enlarge", "4K", "8K", "1080p",
                  "increase resolution", "hires", "superres", "gaussian splatting", "GSASR"]
"""What people type into the node search for an upscaler; every node of the pack answers to them."""


class LoadGSASRModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadGSASRModel",
            display_name="Load GSASR Model",
            category="image/upscaling",
            search_aliases=["load upscale model", "upscale model loader", *SEARCH_ALIASES],
            description="Loads a GSASR arbitrary-scale upscaler. Released models are downloaded into models/gsasr "
                        "on first use; your own models (a folder with encoder.pth + decoder.pth, or one converted "
                        ".safetensors) in models/gsasr are listed too. ComfyUI's model manager places it: it is "
                        "loaded onto the GPU when a GSASR node runs and unloaded like any other model.",
            inputs=[io.Combo.Input(
                "model_name", options=model_folder.choices(), default="EDSR_DF2K",
                tooltip="EDSR_* is fastest, HATL_SA1B sharpest and slowest; *_DF2K and HATL_SA1B are the improved "
                        "releases, *_paper reproduce the paper. Models not on disk are downloaded into models/gsasr "
                        "the first time.")],
            outputs=[GSASRModel.Output(display_name="gsasr_model",
                                       tooltip="The loaded model, for the GSASR upscale nodes.")],
        )

    @classmethod
    def fingerprint_inputs(cls, model_name: str) -> str:
        return model_folder.fingerprint(model_name)

    @classmethod
    def execute(cls, model_name: str) -> io.NodeOutput:
        return io.NodeOutput(model_folder.load(model_name, download_progress=DownloadProgress()))
