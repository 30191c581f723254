"""Parity with the official GSASR for every architecture, through the public API, on the golden cases.

Weights are rebuilt with golden.py, written in the official format (encoder.pth / decoder.pth with
params/params_ema), and loaded with gsasr.load_model exactly as a user's download would be.
"""
from __future__ import annotations

import pytest
import torch
from conftest import golden_folder, load_golden
from tolerances import GOLDEN_GS_REL, GOLDEN_SR_ABS

import gsasr

ARCHS = ["EDSR", "RDN", "SWIN", "EDSR_DIV2K", "RDN_DIV2K", "SWIN_DIV2K", "HATL_SA1B"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    cache = {}

    def get(arch):
        if arch not in cache:
            cache.clear()  # one full-size model in memory at a time
            folder = load_golden().write_official_checkpoint(arch, str(tmp_path_factory.mktemp(arch)))
            cache[arch] = gsasr.load_model(folder, device="cpu")
        return cache[arch]

    return get


def _cases():
    golden = load_golden()
    for arch in ARCHS:
        for case in golden.cases(arch, str(golden_folder())):
            yield pytest.param(arch, case["name"], id=case["name"])


@pytest.mark.parametrize("arch, name", list(_cases()))
def test_golden_parity(models, arch: str, name: str):
    case = next(c for c in load_golden().cases(arch, str(golden_folder())) if c["name"] == name)
    model = models(arch)
    lr = torch.from_numpy(case["lr"])
    gs = model.gaussians(lr, case["scale"])[0]
    ref_gs = torch.from_numpy(case["gs_raw"])
    assert gs.shape == ref_gs.shape
    gs_err = ((gs - ref_gs).abs() / ref_gs.abs().clamp(min=1)).max().item()
    assert gs_err <= GOLDEN_GS_REL, f"{name}: raw Gaussian parameters differ by {gs_err:.3g} (relative)"

    sr = model.upscale(lr, case["scale"], clamp=False)
    ref_sr = torch.from_numpy(case["sr"])
    assert sr.shape == ref_sr.shape
    sr_err = (sr - ref_sr).abs().max().item()
    assert sr_err <= GOLDEN_SR_ABS, f"{name}: image differs by {sr_err:.3g}"
    print(f"{name}: max|gs rel err| {gs_err:.2e}  max|sr err| {sr_err:.2e}")


def test_every_architecture_has_a_case():
    golden = load_golden()
    assert all(golden.cases(arch, str(golden_folder())) for arch in ARCHS)
