"""Parity with the official GSASR for every architecture, through the public API, on the golden cases.

Weights are rebuilt with golden.py, written in the official format (encoder.pth / decoder.pth with
params/params_ema) and loaded with gsasr.load_model exactly as a user's download would be. Two stages are checked,
each at the golden contract's tolerance:

1. the networks: raw Gaussians of ``model.gaussians`` against the golden ``gs_raw``;
2. the rest of the pipeline (canvas size, padding, rendering, crop): ``model.render`` of the golden ``gs_raw``
   against the golden ``sr``; and ``model.upscale`` is exactly ``model.render(model.gaussians(...))``.

Why not the golden ``sr`` straight from ``upscale``: with these untrained weights many Gaussians are nearly
degenerate (|rho| within 1e-5 of 1), where the rendered image depends on the Gaussian parameters with a condition
number of ~1e5 or more. Perturbing the golden ``gs_raw`` by one float32 ulp already moves the golden image by up to
0.3 (``test_golden_images_are_ill_conditioned`` keeps that claim checked), and the official code itself, run on
another machine than the one that made the golden files, lands 5e-2 away from them. The networks are therefore
compared in float64 (``model.double()``): that measures our maths against the official maths without float32
rounding noise, which these weights amplify about a thousandfold (see the closing notes of issue 2).
"""
from __future__ import annotations

import pytest
import torch
from conftest import golden_folder, load_golden
from tolerances import GOLDEN_GS_REL, GOLDEN_GS_REL_FLOAT32, GOLDEN_SR_ABS, ONE_ULP_FLOAT32

import gsasr
from gsasr.model import output_geometry

ARCHS = ["EDSR", "RDN", "SWIN", "EDSR_DIV2K", "RDN_DIV2K", "SWIN_DIV2K", "HATL_SA1B"]


@pytest.fixture(scope="module")
def golden_model(request, tmp_path_factory):
    """The full-size model of one architecture, loaded from official-format files through the public API.

    Module-scoped and parametrized indirectly, so pytest groups every test of an architecture together and builds
    each model once (one in memory at a time)."""
    arch = request.param
    folder = load_golden().write_official_checkpoint(arch, str(tmp_path_factory.mktemp(arch)))
    model = gsasr.load_model(folder, device="cpu")
    model.golden_arch = arch
    return model


def _scales_present() -> list[str]:
    """The scales of the golden cases ("2", "3.7", "4" in ../shared/golden; the compact fixture has "3.7")."""
    golden = load_golden()
    names = [c["name"] for arch in ARCHS for c in golden.cases(arch, str(golden_folder()))]
    return sorted({n.rsplit("_x", 1)[1] for n in names}, key=float)


def _case(arch: str, scale: str) -> dict:
    for case in load_golden().cases(arch, str(golden_folder())):
        if case["name"].endswith(f"_x{scale}"):
            return case
    pytest.skip(f"no golden case for {arch} at x{scale}")


SCALES = _scales_present()
# Parametrizing the module-scoped model by architecture alone (not by (arch, case) pairs) lets pytest group all
# tests of one architecture and build each full-size model once.
by_arch = pytest.mark.parametrize("golden_model", ARCHS, indirect=True)
by_scale = pytest.mark.parametrize("scale", SCALES)
FRACTIONAL = "3.7"  # the case the compact fixture in tests/golden also has


def _relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.double() - ref.double()).abs() / ref.double().abs().clamp(min=1)).max().item()


@by_arch
@by_scale
def test_golden_gaussians(golden_model, scale: str):
    case = _case(golden_model.golden_arch, scale)
    model = golden_model.double()
    try:
        gs = model.gaussians(torch.from_numpy(case["lr"]), case["scale"])[0]
    finally:
        model.float()
    ref = torch.from_numpy(case["gs_raw"])
    assert gs.shape == ref.shape
    err = _relative_error(gs, ref)
    assert err <= GOLDEN_GS_REL, f"{case['name']}: raw Gaussian parameters differ by {err:.3g} (relative)"


@by_arch
@by_scale
def test_golden_image_from_golden_gaussians(golden_model, scale: str):
    case = _case(golden_model.golden_arch, scale)
    model = golden_model
    lr = torch.from_numpy(case["lr"])
    geometry = output_geometry(lr.shape[-2:], case["scale"])
    sr = model.render(torch.from_numpy(case["gs_raw"]), lr.shape[-2:], geometry)
    ref = torch.from_numpy(case["sr"][0])
    assert sr.shape == ref.shape
    err = (sr - ref).abs().max().item()
    assert err <= GOLDEN_SR_ABS, f"{case['name']}: image differs by {err:.3g}"


@by_arch
def test_float32_pipeline(golden_model):
    """The production precision: float32 Gaussians near golden (see GOLDEN_GS_REL_FLOAT32), and upscale() is
    exactly render(gaussians()) (padding, canvas, crop)."""
    case = _case(golden_model.golden_arch, FRACTIONAL)
    model = golden_model
    lr = torch.from_numpy(case["lr"])
    gs = model.gaussians(lr, case["scale"])[0]
    err = _relative_error(gs, torch.from_numpy(case["gs_raw"]))
    assert err <= GOLDEN_GS_REL_FLOAT32, f"{case['name']}: float32 raw Gaussians differ by {err:.3g} (relative)"
    sr = model.upscale(lr, case["scale"], clamp=False)
    assert sr.shape == case["sr"].shape
    assert torch.equal(sr[0], model.render(gs, lr.shape[-2:], output_geometry(lr.shape[-2:], case["scale"])))


@by_arch
def test_golden_images_are_ill_conditioned(golden_model):
    """The reason end-to-end images are not compared at 1e-4: one ulp of noise on the Gaussians exceeds it."""
    case = _case(golden_model.golden_arch, FRACTIONAL)
    model = golden_model
    lr = torch.from_numpy(case["lr"])
    gs = torch.from_numpy(case["gs_raw"])
    torch.manual_seed(0)
    nudged = gs * (1 + ONE_ULP_FLOAT32 * torch.randn_like(gs))
    geometry = output_geometry(lr.shape[-2:], case["scale"])
    moved = (model.render(nudged, lr.shape[-2:], geometry) - model.render(gs, lr.shape[-2:], geometry)).abs().max()
    assert moved > GOLDEN_SR_ABS


def test_every_architecture_has_a_case():
    golden = load_golden()
    assert all(golden.cases(arch, str(golden_folder())) for arch in ARCHS)
