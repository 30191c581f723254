"""The pack as a ComfyUI V3 extension: what ``comfy_entrypoint()`` hands ComfyUI."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .loader import LoadGSASRModel
from .upscale import GSASRUpscale, GSASRUpscaleToSize
from .upscale_model import GSASRUpscaleModel

NODES: tuple[type[io.ComfyNode], ...] = (LoadGSASRModel, GSASRUpscale, GSASRUpscaleToSize, GSASRUpscaleModel)


class GSASRExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> GSASRExtension:
    return GSASRExtension()
