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


def write_visible_model(folder: Path) -> Path:
    """A generated model (official layout) whose output shows structure instead of clipping to flat white.

    Random weights make every Gaussian's colour sigmoid(rgb) x sigmoid(alpha) about 0.5, and the dozen Gaussians
    that overlap a pixel then add up to ~4.6, clipped to 1. A constant alpha of sigmoid(-2.5) brings the sum to
    mid-grey and a 10x larger colour head spreads it over most of [0, 1], so comparisons between outputs mean
    something (a one-pixel shift of it costs ~31 dB)."""
    write_official_folder(folder)
    checkpoint = torch.load(folder / "decoder.pth")
    for weights in checkpoint.values():
        weights["mlp_block_rgb.4.weight"] *= 10.0
        weights["mlp_block_alpha.4.weight"].zero_()
        weights["mlp_block_alpha.4.bias"].fill_(-2.5)
    torch.save(checkpoint, folder / "decoder.pth")
    return folder


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    return write_official_folder(tmp_path / "tiny_model")


# ------------------------------------------------------------------ golden Gaussians -> golden image, per backend

# LR sides are padded to a multiple of this (the LCM of encoder and decoder windows, spec A.1).
GOLDEN_DENOMINATOR = {"EDSR": 12, "RDN": 12, "EDSR_DIV2K": 12, "RDN_DIV2K": 12, "SWIN": 24, "SWIN_DIV2K": 16,
                      "HATL_SA1B": 16}


def golden_render_params() -> list:
    """pytest params (arch, case name) for every golden case, or one skipped param when there is no golden data."""
    folder = golden_folder()
    names = sorted(p.name for p in folder.glob("case_*.npz")) if folder.is_dir() else []
    params = []
    for name in names:
        arch = next((a for a in sorted(GOLDEN_DENOMINATOR, key=len, reverse=True) if name.startswith(f"case_{a}_")),
                    None)
        if arch is not None:
            params.append(pytest.param(arch, name[5:-4], id=name[5:-4]))
    return params or [pytest.param("none", "none", marks=pytest.mark.skip(
        reason="no golden data: neither ../shared/golden beside the repository nor tests/golden"))]


def render_golden_case(arch: str, case_name: str, backend: str, device: str = "cpu"):
    """(rendered, expected): a case's golden gs_raw through render_gaussians(backend), and its golden sr."""
    import math

    from gsasr.render import render_gaussians

    case = next(c for c in load_golden().cases(arch, str(golden_folder())) if c["name"] == case_name)
    scale = case["scale"]
    den = GOLDEN_DENOMINATOR[arch]
    hp, wp = (math.ceil(n / den) * den for n in case["lr"].shape[-2:])
    gaussians = torch.from_numpy(case["gs_raw"]).to(device)
    assert gaussians.shape == (16 * hp * wp, 9)
    expected = torch.from_numpy(case["sr"])[0]
    canvas = (math.floor(scale * hp), math.floor(scale * wp))
    out = render_gaussians(gaussians, scale, canvas, region=(0, 0, *expected.shape[-2:]), backend=backend)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    return out.cpu(), expected


def assert_encoder_shapes(encoder, shapes) -> None:
    """Every encoder maps (B, 3, H, W) to (B, out_channels, H, W) for H, W multiples of its window."""
    encoder.eval()
    for shape in shapes:
        assert shape[2] % encoder.window_size == 0 and shape[3] % encoder.window_size == 0, shape
        with torch.no_grad():
            out = encoder(torch.rand(shape))
        assert out.shape == (shape[0], encoder.out_channels, *shape[2:]), (shape, tuple(out.shape))
        assert torch.isfinite(out).all()


@pytest.fixture(scope="session")
def network_kernels():
    """The compiled module with the networks' CPU kernels (cuda/network_cpu.cpp, attention_cpu.cpp), or skip."""
    from gsasr import render

    module, reason = render._compiled()
    if module is None or not hasattr(module, "residual_layer_norm"):
        pytest.skip(f"the compiled module is not built here: {reason or 'built before the network kernels'}")
    return module
