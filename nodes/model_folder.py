"""The ``models/gsasr`` folder(s): what is in them, what the loader's list shows, and loading by that name.

ComfyUI knows the folder as ``gsasr`` (``folder_paths``), so ``extra_model_paths.yaml`` entries named ``gsasr:``
are searched too; released models that are not on disk are downloaded into the first folder. A local model is a
folder holding the official ``encoder.pth`` + ``decoder.pth`` (listed by its path relative to the models folder)
or one converted ``.safetensors`` file.

Loaded models are kept across runs and loader nodes, each with the one ComfyUI patcher that places its weights
(:class:`.managed.ManagedGSASR`): a model and its patcher enter and leave the cache together.
"""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..gsasr import ModelNotFoundError, load_model, release_names
from ..gsasr.registry import PARTS, find_release, local_release_folder
from .managed import ManagedGSASR

FOLDER_NAME = "gsasr"
SINGLE_FILE_SUFFIX = ".safetensors"
CACHE_SIZE = 2
"""Loaded models kept across runs and loader nodes (where ComfyUI's model manager puts them)."""

_cache: dict[tuple, ManagedGSASR] = {}


def register() -> None:
    """Add ``models/gsasr`` to ComfyUI's model folders (first, so downloads land there); keeps yaml entries."""
    folder_paths.add_model_folder_path(FOLDER_NAME, os.path.join(folder_paths.models_dir, FOLDER_NAME),
                                       is_default=True)


def roots() -> list[Path]:
    return [Path(p) for p in folder_paths.get_folder_paths(FOLDER_NAME)]


def download_root() -> Path:
    return roots()[0]


def local_models() -> dict[str, Path]:
    """Name shown in the list -> model folder or file, over all gsasr folders (the first one wins a name)."""
    found: dict[str, Path] = {}
    for root in roots():
        if not root.is_dir():
            continue
        seen: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            # Linked folders are followed (models kept elsewhere), each real folder once (a link loop ends here).
            real = os.path.realpath(dirpath)
            if real in seen:
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # skips the download cache
            here = Path(dirpath)
            if all(f"{part}.pth" in filenames for part in PARTS):
                found.setdefault(here.relative_to(root).as_posix(), here)
            for name in sorted(filenames):
                if name.endswith(SINGLE_FILE_SUFFIX):
                    found.setdefault((here / name).relative_to(root).as_posix(), here / name)
    found.pop(".", None)  # encoder.pth + decoder.pth loose in the root: not a named model
    return found


def choices() -> list[str]:
    """The loader's list: every released model (downloaded on first use), then the other local models."""
    local = [name for name in local_models() if name not in release_names()]
    return release_names() + sorted(local, key=str.lower)


def _files(path: Path) -> list[Path]:
    return [path / f"{part}.pth" for part in PARTS] if path.is_dir() else [path]


def fingerprint(name: str) -> str:
    """Changes whenever the files behind ``name`` change (ComfyUI then runs the loader again)."""
    return _fingerprint(name, local_models().get(name))


def _fingerprint(name: str, path: Path | None) -> str:
    if path is None:
        return f"{name}: not downloaded yet"
    stats = [(str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in _files(path) if f.exists()]
    return repr(stats)


def load(name: str, download_progress=None) -> ManagedGSASR:
    """The model called ``name`` in :func:`choices` with its patcher, from memory when its files did not change."""
    path = local_models().get(name)  # one walk of the models folders per load
    key = (name, _fingerprint(name, path))
    if key in _cache:
        return _cache[key]
    if name in release_names():  # by name, so the files are checked to be that release (and downloaded if absent)
        folder = path.parent if path is not None else download_root()
        model = load_model(name, models_dir=str(folder), download_progress=download_progress)
        key = (name, _fingerprint(name, local_release_folder(find_release(name), folder)))  # they exist now
    elif path is not None:
        model = load_model(str(path))
    else:
        raise ModelNotFoundError(f"No GSASR model {name!r} in {', '.join(map(str, roots()))}: it was moved or "
                                 f"deleted. Pick another model, or press R to refresh the list.")
    for old in [k for k in _cache if k[0] == name]:
        del _cache[old]
    while len(_cache) >= CACHE_SIZE:
        del _cache[next(iter(_cache))]  # the oldest
    _cache[key] = ManagedGSASR(model)
    return _cache[key]
