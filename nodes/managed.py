"""A loaded GSASR model under ComfyUI's model manager (the GSASR_MODEL socket value).

ComfyUI decides where models live through ``ModelPatcher`` objects listed in
``comfy.model_management.current_loaded_models``: it loads them onto the torch device when a node asks
(``load_models_gpu``), counts them, moves them back to the offload device when another model needs the memory, and
unloads them all on "Unload models" / ``POST /free``; ``--lowvram``, ``--novram`` and ``--cpu`` act through it. So
each loaded GSASR model gets one patcher, made once with the model and kept with it in the loader's cache, and the
nodes never move weights themselves: they ask ComfyUI to load the patcher, then run where the weights are.
"""
from __future__ import annotations

import comfy.model_management as model_management
import comfy.model_patcher
import torch

from ..gsasr import GSASRModel
from ..gsasr.tiling import upscale_work_bytes

MAX_WORK_BYTES = 2 * 2**30
"""The most working memory we ask ComfyUI to free for one image: a big image is tiled to fit what is free, so asking
for its whole untiled need would only unload every other model for nothing."""


class GSASRNetworks(torch.nn.Module):
    """What the patcher holds (ComfyUI logs it as "Requested to load GSASRNetworks").

    A ModelPatcher keeps its bookkeeping (``device``, loaded bytes) as attributes of the module it holds, and
    GSASRModel's ``device`` is a read-only property that reports where the weights are; this container takes
    the bookkeeping instead and holds the model as its only submodule, so moving it moves every weight."""

    def __init__(self, gsasr: GSASRModel):
        super().__init__()
        self.gsasr = gsasr


class ManagedGSASR:
    """A GSASR model and the ComfyUI patcher that places its weights."""

    def __init__(self, model: GSASRModel):
        self.model = model
        self.patcher = comfy.model_patcher.CoreModelPatcher(
            GSASRNetworks(model), load_device=model_management.get_torch_device(),
            offload_device=model_management.unet_offload_device())

    def __repr__(self) -> str:
        return f"ManagedGSASR({self.model!r})"

    def work_bytes(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
        """What one image of ``in_hw`` -> ``out_hw`` needs besides the weights, as our tile planner counts it."""
        return upscale_work_bytes(in_hw, out_hw, self.model.denominator, self.model.bytes_per_lr_pixel(),
                                  MAX_WORK_BYTES)

    def load(self, work_bytes: int) -> torch.device:
        """Has ComfyUI load the weights onto its torch device, unloading other models until the weights and
        ``work_bytes`` fit; returns the device the weights are on (the CPU under ``--cpu`` or ``--novram``)."""
        model_management.load_models_gpu([self.patcher], memory_required=work_bytes, force_full_load=True)
        return self.model.device

    def ensure_loaded(self, work_bytes: int) -> torch.device:
        """Like :meth:`load`, but a no-op when ComfyUI has it loaded already (a caller loaded it for its tiles)."""
        loaded = any(p is self.patcher for p in model_management.loaded_models())
        if loaded and not self.patcher.model.model_lowvram:  # lowvram: ComfyUI moved part of it off since
            return self.model.device
        return self.load(work_bytes)
