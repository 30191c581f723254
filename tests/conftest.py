"""Shared test helpers: where golden data lives, and tiny generated GSASR models (nothing is downloaded)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_GOLDEN = REPO.parent / "shared" / "golden"
FIXTURE_GOLDEN = REPO / "tests" / "golden"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def golden_folder() -> Path:
    """The full shared golden set when it is beside the repository, else the compact fixture in tests/golden."""
    return SHARED_GOLDEN if (SHARED_GOLDEN / "golden.py").is_file() else FIXTURE_GOLDEN


def load_golden():
    """The golden.py module of :func:`golden_folder` (weights rule, cases)."""
    folder = golden_folder()
    name = f"_golden_{abs(hash(str(folder)))}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, folder / "golden.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def tiny_networks(form: str = "enhanced", encoder: str = "EDSR"):
    """A small but complete GSASR (encoder + decoder) with random weights, fast enough for CPU tests."""
    from gsasr.archs.decoder import GaussianDecoder
    from gsasr.archs.encoder_edsr import EDSREncoder

    torch.manual_seed(0)
    enc = EDSREncoder(num_feat=16, num_block=1)
    dec = GaussianDecoder(form=form, in_channels=16, channels=24, num_heads=2, window_size=4,
                          num_crossattn_blocks=1, num_crossattn_layers=2, num_selfattn_blocks=1,
                          num_selfattn_layers=2)
    return enc, dec


def tiny_checkpoint(form: str = "enhanced", release: str | None = None):
    from gsasr.loading import Checkpoint

    enc, dec = tiny_networks(form)
    meta = {"release": release} if release else {}
    return Checkpoint(enc.state_dict(), dec.state_dict(), meta)


def write_official_folder(folder: Path, form: str = "enhanced", wrapper: str = "params_ema") -> Path:
    """encoder.pth / decoder.pth the way BasicSR writes them ({'params', 'params_ema'})."""
    ckpt = tiny_checkpoint(form)
    folder.mkdir(parents=True, exist_ok=True)
    for part, sd in (("encoder", ckpt.encoder), ("decoder", ckpt.decoder)):
        obj = sd if wrapper == "bare" else {"params": sd, wrapper: sd} if wrapper == "params_ema" else {wrapper: sd}
        torch.save(obj, folder / f"{part}.pth")
    return folder


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    return write_official_folder(tmp_path / "tiny_model")
