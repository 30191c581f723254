"""Reading checkpoints safely, recognising the GSASR architecture from its keys, and building the networks.

Two on-disk layouts are accepted:

* the official one: a folder with ``encoder.pth`` and ``decoder.pth``, each ``{"params": sd, "params_ema": sd}``
  (``params_ema`` preferred, ``params`` or a bare state dict accepted, a ``module.`` prefix stripped);
* ours: one ``.safetensors`` file holding both networks (keys prefixed ``encoder.`` / ``decoder.``) and metadata
  (release name, architecture, source revision), written by :func:`save_single_file` (``python -m gsasr convert``).

Pickled files are only ever read with ``torch.load(weights_only=True)``: a file that asks to build an arbitrary
Python object (the way malicious checkpoints run code) is refused before anything in it runs.
The architecture is found from key names and tensor shapes, never from the file name.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .errors import CheckpointError, UnsafeCheckpointError

StateDict = dict[str, torch.Tensor]

SINGLE_FILE_FORMAT = "gsasr-single-file"
SINGLE_FILE_VERSION = "1"
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


# ------------------------------------------------------------------------------------------------- reading files

def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """Load a checkpoint file without executing code: returns (raw object as a dict, safetensors metadata)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable .safetensors file ({exc}). Re-download or re-convert it.") from exc
        return tensors, metadata
    if path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: unsupported file type {path.suffix!r}; expected .pth/.pt/.ckpt or .safetensors.")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"Refused to load {path}: it contains pickled Python objects other than tensors, so loading it could run "
            f"code. Nothing in it was executed. Only use checkpoints from a source you trust; the official GSASR "
            f"files load without this. Details: {str(exc).splitlines()[0]}") from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({exc}). The file may be truncated or "
                              f"corrupt: delete it and download it again.") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict.")
    return dict(obj), {}


def canonical_state_dict(obj: Mapping[str, Any], where: str = "checkpoint") -> StateDict:
    """Unwrap BasicSR/DataParallel containers: prefer ``params_ema``, then ``params``, ``state_dict``, a bare dict."""
    for wrapper in ("params_ema", "params", "state_dict", "model"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{where} holds no tensors (top-level keys: {sorted(obj)[:8]}).")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


# ------------------------------------------------------------------------------------------- architecture detection

@dataclass(frozen=True)
class EncoderKind:
    name: str                                   # "EDSR", "RDN", "SwinIR", "HAT"
    marker_keys: tuple[str, ...]                # all present => this encoder (checked in order, most specific first)
    module: str                                 # gsasr.archs.<module>
    cls: str
    infer: str                                  # name of the config-inference function in that module


ENCODERS: tuple[EncoderKind, ...] = (
    EncoderKind("HAT", ("layers.0.residual_group.overlap_attn.qkv.weight", "conv_before_upsample.0.weight"),
                "encoder_hat", "HATEncoder", "infer_hat_config"),
    EncoderKind("SwinIR", ("layers.0.residual_group.blocks.0.attn.relative_position_bias_table",
                           "conv_before_upsample.0.weight"), "encoder_swinir", "SwinIREncoder", "infer_swinir_config"),
    EncoderKind("RDN", ("SFENet1.weight", "GFF.0.weight"), "encoder_rdn", "RDNEncoder", "infer_rdn_config"),
    EncoderKind("EDSR", ("conv_first.weight", "body.0.conv1.weight", "conv_after_body.weight"),
                "encoder_edsr", "EDSREncoder", "infer_edsr_config"),
)

# Keys that identify popular non-GSASR checkpoints, so the error can say what the file actually is.
_FOREIGN_SIGNATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ESRGAN / Real-ESRGAN (RRDBNet)", ("RRDB_trunk.0.RDB1.conv1.weight",)),
    ("ESRGAN / Real-ESRGAN (RRDBNet)", ("body.0.rdb1.conv1.weight",)),
    ("ESRGAN (old architecture)", ("model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight")),
    ("Real-ESRGAN compact (SRVGGNet)", ("body.0.weight", "body.1.weight")),
    ("a fixed-scale HAT/SwinIR upscaler (it has an upsampler, no Gaussian decoder)", ("conv_last.weight",)),
    ("a Stable Diffusion / diffusion model", ("model.diffusion_model.input_blocks.0.0.weight",)),
)


def _has_all(sd: Mapping[str, Any], keys: tuple[str, ...]) -> bool:
    return all(k in sd for k in keys)


def describe_foreign(sd: Mapping[str, Any]) -> str:
    """A human description of what a non-GSASR state dict looks like, for error messages."""
    for label, keys in _FOREIGN_SIGNATURES:
        if _has_all(sd, keys):
            return f"it looks like {label}"
    sample = ", ".join(list(sd)[:4])
    return f"its {len(sd)} keys match no GSASR network (first keys: {sample})"


def detect_encoder(sd: Mapping[str, torch.Tensor]) -> EncoderKind:
    for kind in ENCODERS:
        if _has_all(sd, kind.marker_keys):
            return kind
    raise CheckpointError(f"This is not a GSASR encoder: {describe_foreign(sd)}.")


def is_decoder(sd: Mapping[str, Any]) -> bool:
    return "gs_embedding" in sd and "scale_mlp.0.weight" in sd


def _arch_module(name: str):
    import importlib

    return importlib.import_module(f"{__package__}.archs.{name}")


def build_encoder(sd: StateDict) -> tuple[nn.Module, EncoderKind, dict]:
    kind = detect_encoder(sd)
    module = _arch_module(kind.module)
    config = _infer(getattr(module, kind.infer), sd, f"{kind.name} encoder")
    net = getattr(module, kind.cls)(**config)
    _load_strict(net, sd, f"{kind.name} encoder")
    return net, kind, config


def build_decoder(sd: StateDict) -> tuple[nn.Module, dict]:
    if not is_decoder(sd):
        raise CheckpointError(f"This is not a GSASR decoder: {describe_foreign(sd)}.")
    module = _arch_module("decoder")
    config = _infer(module.infer_decoder_config, sd, "GSASR decoder")
    net = module.GaussianDecoder(**config)
    _load_strict(net, sd, "GSASR decoder")
    return net, config


def _infer(fn: Callable[[Mapping[str, torch.Tensor]], dict], sd: StateDict, what: str) -> dict:
    try:
        return fn(sd)
    except (KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"The {what} weights are incomplete or reshaped ({exc}); the file is damaged or from "
                              f"a different model.") from exc


def _load_strict(net: nn.Module, sd: StateDict, what: str) -> None:
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        raise CheckpointError(f"The {what} weights do not fit the detected architecture: {' '.join(lines[:3])[:600]}") from exc


def architecture_name(encoder_kind: str, decoder_config: Mapping[str, Any]) -> str:
    """A readable architecture id, e.g. ``EDSR+paper`` or ``HAT+enhanced``."""
    return f"{encoder_kind}+{decoder_config['form']}"


def denominator(encoder: nn.Module, decoder: nn.Module) -> int:
    """LR sides are padded to a multiple of this: both networks' window sizes must divide it."""
    return math.lcm(int(getattr(encoder, "window_size", 1)), int(decoder.window_size))


# ------------------------------------------------------------------------------------------------ whole checkpoints

@dataclass
class Checkpoint:
    """Both networks' state dicts plus what we know about where they came from."""

    encoder: StateDict
    decoder: StateDict
    metadata: dict[str, str] = field(default_factory=dict)


def read_official_folder(folder: str | os.PathLike) -> Checkpoint:
    folder = Path(folder)
    paths = {part: folder / f"{part}.pth" for part in ("encoder", "decoder")}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise CheckpointError(f"{folder} is missing {' and '.join(missing)}: an official GSASR model folder holds "
                              f"encoder.pth and decoder.pth side by side.")
    sds = {part: canonical_state_dict(read_checkpoint(p)[0], str(p)) for part, p in paths.items()}
    # A swapped pair is a common mistake when copying files by hand: say so rather than 'not GSASR'.
    if is_decoder(sds["encoder"]) and not is_decoder(sds["decoder"]):
        raise CheckpointError(f"In {folder}, encoder.pth holds the decoder and decoder.pth the encoder: swap their names.")
    metadata = {"source": str(folder)}
    # Files fetched by huggingface_hub sit in .../snapshots/<commit>/...: keep that commit as provenance.
    revision = re.search(r"snapshots[/\\]([0-9a-f]{40})[/\\]", os.path.abspath(folder) + os.sep)
    if revision:
        metadata["source_revision"] = revision.group(1)
    return Checkpoint(sds["encoder"], sds["decoder"], metadata)


def read_single_file(path: str | os.PathLike) -> Checkpoint:
    obj, metadata = read_checkpoint(path)
    enc = {k[len("encoder."):]: v for k, v in obj.items() if k.startswith("encoder.")}
    dec = {k[len("decoder."):]: v for k, v in obj.items() if k.startswith("decoder.")}
    if not enc or not dec:
        raise CheckpointError(f"{path} is not a GSASR single-file model (no 'encoder.'/'decoder.' tensors): "
                              f"{describe_foreign(canonical_state_dict(obj, str(path)))}. Single files are written by "
                              f"`python -m gsasr convert`; official models are folders with encoder.pth and decoder.pth.")
    return Checkpoint(enc, dec, dict(metadata))


def read_any(source: str | os.PathLike) -> Checkpoint:
    """A folder in the official layout, or one of our single files."""
    path = Path(source)
    if path.is_dir():
        return read_official_folder(path)
    if path.is_file():
        return read_single_file(path)
    raise CheckpointError(f"{path} does not exist.")


def save_single_file(checkpoint: Checkpoint, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write both networks and metadata to one .safetensors file (atomically; never replaces a file unasked)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: the single-file format is .safetensors.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it.")
    tensors = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in checkpoint.encoder.items()}
    tensors.update({f"decoder.{k}": v.detach().cpu().contiguous() for k, v in checkpoint.decoder.items()})
    metadata = {str(k): str(v) for k, v in checkpoint.metadata.items()}
    metadata.update(format=SINGLE_FILE_FORMAT, format_version=SINGLE_FILE_VERSION)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def save_official_folder(checkpoint: Checkpoint, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write encoder.pth / decoder.pth in the official layout ({'params_ema': sd}), e.g. to go back from a single file."""
    folder = Path(folder)
    targets = {"encoder": folder / "encoder.pth", "decoder": folder / "decoder.pth"}
    clash = [str(p) for p in targets.values() if p.exists()]
    if clash and not overwrite:
        raise FileExistsError(f"{', '.join(clash)} already exist(s); pass overwrite=True (CLI: --overwrite).")
    folder.mkdir(parents=True, exist_ok=True)
    for part, target in targets.items():
        sd = {k: v.detach().cpu().contiguous() for k, v in getattr(checkpoint, part).items()}
        tmp = target.with_name(target.name + ".partial")
        torch.save({"params_ema": sd}, tmp)
        os.replace(tmp, target)
    return folder


def metadata_json(checkpoint: Checkpoint) -> str:
    return json.dumps(checkpoint.metadata, indent=1, sort_keys=True)
