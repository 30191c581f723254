"""Exception types of the GSASR core. Every message says what happened and what to do about it."""
from __future__ import annotations


class GSASRError(Exception):
    """Base class of every error raised on purpose by this package."""


class CheckpointError(GSASRError, ValueError):
    """A checkpoint file or state dict is unreadable, unsafe, or not a GSASR model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint asks to run code while being unpickled; it was refused without running anything."""


class ModelNotFoundError(GSASRError, FileNotFoundError):
    """A model name or path does not resolve to weights on disk, and they could not be downloaded."""


class InvalidInputError(GSASRError, ValueError):
    """An image, scale or size passed to the model is out of range or malformed."""


class BackendUnavailableError(GSASRError, RuntimeError):
    """An explicitly requested rasteriser backend cannot be used here; the message says why."""


class InsufficientMemoryError(GSASRError, MemoryError):
    """Even the smallest tiles did not fit in the memory available; the message says what to try."""
