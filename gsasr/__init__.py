"""GSASR: arbitrary-scale super-resolution with 2D Gaussian splatting (ICCV 2025), framework-free core.

    import gsasr
    model = gsasr.load_model("EDSR_DF2K", device="cpu")
    out = model.upscale(image, scale=3.7)        # image (B, 3, H, W) in [0, 1] -> (B, 3, floor(3.7H), floor(3.7W))
    out = model.upscale(image, size=(2160, 3840))

Importing this package does no work: no download, no compilation, no CUDA initialisation.
"""
from .errors import (BackendUnavailableError, CheckpointError, GSASRError, InsufficientMemoryError,
                     InvalidInputError, ModelNotFoundError, UnsafeCheckpointError)
from .model import MAX_SCALE, GSASRModel, ModelInfo, load_model
from .registry import RELEASES, download, release_names

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError", "CheckpointError", "GSASRError", "GSASRModel", "InsufficientMemoryError",
    "InvalidInputError", "MAX_SCALE",
    "ModelInfo", "ModelNotFoundError", "RELEASES", "UnsafeCheckpointError", "__version__", "download", "load_model",
    "release_names",
]
