"""The whole model on a CUDA GPU: golden parity, tiling, AMP and out-of-memory recovery on the device.

Skipped where PyTorch sees no CUDA GPU (CI never has one). ``bench/device_session.sh`` runs this file on a lent
GPU. The CPU versions of these checks live in test_golden_parity.py, test_tiling.py and test_model_api.py; here
they guard what only a GPU exercises: the accelerator chunk sizes of the decoder, CUDA attention and convolution
kernels, the cuda rasteriser inside the pipeline, bf16 autocast and a real CUDA out-of-memory error.
"""
from __future__ import annotations

import contextlib
import math

import pytest
import torch
from conftest import golden_folder, load_golden, write_official_folder
from test_images import psnr, structured_image
from tolerances import GOLDEN_GS_REL, GOLDEN_GS_REL_FLOAT32, TILED_VS_WHOLE_MIN_PSNR_DB

import gsasr
from gsasr import tiling
from gsasr.model import resolve_amp

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch sees no CUDA GPU")

ARCHS = ["EDSR", "RDN", "SWIN", "EDSR_DIV2K", "RDN_DIV2K", "SWIN_DIV2K", "HATL_SA1B"]
FRACTIONAL = "3.7"  # the golden case every golden set has
SCALE = 2.7  # the fractional scale of the CPU tiling test


@contextlib.contextmanager
def no_tf32():
    """Full float32 matrix products and convolutions. PyTorch lets cuDNN use TF32 (10-bit mantissa) for float32
    convolutions by default, which alone moves the untrained golden networks far beyond the float32 contract."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _golden_case(arch: str) -> dict:
    for case in load_golden().cases(arch, str(golden_folder())):
        if case["name"].endswith(f"_x{FRACTIONAL}"):
            return case
    pytest.skip(f"no golden case for {arch} at x{FRACTIONAL}")


def _relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.double().cpu() - ref.double()).abs() / ref.double().abs().clamp(min=1)).max().item()


@pytest.fixture(scope="module", params=ARCHS)
def golden_cuda_model(request, tmp_path_factory):
    arch = request.param
    folder = load_golden().write_official_checkpoint(arch, str(tmp_path_factory.mktemp(arch)))
    model = gsasr.load_model(folder, device="cuda")
    model.golden_arch = arch
    yield model
    del model
    torch.cuda.empty_cache()


def test_golden_gaussians_in_float64_on_cuda(golden_cuda_model):
    """The exact function on the GPU code paths: float64 on CUDA against the golden raw Gaussians."""
    case = _golden_case(golden_cuda_model.golden_arch)
    model = golden_cuda_model.double()
    try:
        gs = model.gaussians(torch.from_numpy(case["lr"]), case["scale"])[0]
    finally:
        model.float()
    assert gs.device.type == "cuda"
    err = _relative_error(gs, torch.from_numpy(case["gs_raw"]))
    assert err <= GOLDEN_GS_REL, f"{case['name']} on cuda (float64): raw Gaussians differ by {err:.3g}"


def test_golden_gaussians_in_float32_on_cuda(golden_cuda_model):
    case = _golden_case(golden_cuda_model.golden_arch)
    with no_tf32():
        gs = golden_cuda_model.gaussians(torch.from_numpy(case["lr"]), case["scale"])[0]
    err = _relative_error(gs, torch.from_numpy(case["gs_raw"]))
    assert err <= GOLDEN_GS_REL_FLOAT32, f"{case['name']} on cuda (float32): raw Gaussians differ by {err:.3g}"


@pytest.fixture(scope="module")
def tiny_cuda_model(tmp_path_factory):
    return gsasr.load_model(str(write_official_folder(tmp_path_factory.mktemp("m") / "tiny")), device="cuda")


def test_tiled_equals_whole_image_on_cuda(tiny_cuda_model):
    image = structured_image().cuda()
    with no_tf32():
        whole = tiny_cuda_model.upscale(image, SCALE, tile=0, clamp=False)
        tiled = tiny_cuda_model.upscale(image, SCALE, tile=48, clamp=False)
    assert tiled.shape == whole.shape == (1, 3, math.floor(SCALE * 192), math.floor(SCALE * 160))
    assert tiled.device.type == "cuda" and bool(torch.isfinite(tiled).all())
    value = psnr(tiled, whole)
    assert value >= TILED_VS_WHOLE_MIN_PSNR_DB, f"tiled vs whole on cuda: {value:.2f} dB"


def test_amp_auto_on_cuda_uses_half_precision_and_returns_float32(tiny_cuda_model):
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert resolve_amp("auto", torch.device("cuda")) == expected
    image = structured_image(48, 40).cuda()
    for amp in ("auto", "fp16", "bf16"):
        gs = tiny_cuda_model.gaussians(image, 2.0, amp=amp)
        out = tiny_cuda_model.upscale(image, 2.0, amp=amp)
        assert gs.dtype == out.dtype == torch.float32
        assert bool(torch.isfinite(gs).all()) and bool(torch.isfinite(out).all())
        assert out.shape == (1, 3, 96, 80)


def test_a_real_cuda_out_of_memory_retries_with_smaller_tiles(tiny_cuda_model, monkeypatch):
    """Cap this process's share of the GPU so the automatic tile (sized from the device's free memory, which the
    cap does not lower) runs out of memory for real; upscale must retry with smaller tiles and still match."""
    image = structured_image(384, 384).cuda()
    with no_tf32():
        reference = tiny_cuda_model.upscale(image, 4.0, tile=96, clamp=False).cpu()
    retries = []
    smaller_tile = tiling.smaller_tile
    monkeypatch.setattr(tiling, "smaller_tile", lambda *a, **k: retries.append(a[0]) or smaller_tile(*a, **k))
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    # About 1 GiB beyond the weights and the image: less than the untiled image needs (its decoder stream alone is
    # ~0.6 GB and an accelerator chunk of the Gaussian heads ~0.4 GB), enough for small tiles.
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_allocated() + 2**30) / total)
    try:
        with no_tf32():
            out = tiny_cuda_model.upscale(image, 4.0, clamp=False)  # tile=None: automatic, then retries
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert retries, "the memory cap caused no out-of-memory error: lower it so the retry path is exercised"
    assert out.shape == reference.shape
    assert psnr(out.cpu(), reference) >= TILED_VS_WHOLE_MIN_PSNR_DB
