"""ComfyUI nodes of ComfyUI-GSASR (ids are forever: workflows refer to them)."""
from .loader import LoadGSASRModel
from .upscale import GSASRUpscale, GSASRUpscaleToSize

NODE_CLASS_MAPPINGS = {
    "LoadGSASRModel": LoadGSASRModel,
    "GSASRUpscale": GSASRUpscale,
    "GSASRUpscaleToSize": GSASRUpscaleToSize,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadGSASRModel": "Load GSASR Model",
    "GSASRUpscale": "GSASR Upscale (by factor)",
    "GSASRUpscaleToSize": "GSASR Upscale to Size",
}
