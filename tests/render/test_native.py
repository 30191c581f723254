"""The native rasterisers (cpu, cuda, triton) against the PyTorch reference, on fresh random inputs and golden data.

Every available native backend is compared with ``backend="torch"``; a backend that is not built here skips
with the build's reason, except in CI (CI=true), where the cpu backend must exist (.ci/run builds it) and triton
runs in its interpreter on CPU tensors (.ci/run installs it; tests/render/conftest.py sets TRITON_INTERPRET where
there is no GPU). Tests of the compiled module's own entry points take the ``compiled_backend`` fixture; the triton
golden cases and the triton-only checks are in test_triton.py.
"""
from __future__ import annotations

import logging
import math
import os
import sys

import pytest
import torch
from conftest import golden_render_params, render_golden_case, tiny_networks
from gaussian_grids import grid_gaussians
from tolerances import NATIVE_GOLDEN_RENDER_ABS, NATIVE_RENDER_ABS, TRITON_RENDER_ABS

from gsasr import render
from gsasr.errors import BackendUnavailableError, InvalidInputError
from gsasr.render import _build, _native, reference


def _device(backend: str) -> torch.device:
    """The device backend renders here (triton: the GPU, or the CPU under its interpreter), or skip."""
    reason = render.available_backends()[backend]
    if reason is not None:
        pytest.skip(f"the {backend} backend is unavailable: {reason}")
    return render.backend_device(backend)


def _select(param: str, monkeypatch) -> str:
    """The backend named by a fixture param ("cuda-compact": cuda with its compact gather kernel, set through
    GSASR_CUDA_GATHER), or skip."""
    name, _, gather = param.partition("-")
    _device(name)
    monkeypatch.setenv(_native.CUDA_GATHER_ENV_VAR, gather or _native.CUDA_GATHERS[0])
    return name


@pytest.fixture(params=["cpu", "cuda", "cuda-compact"])
def compiled_backend(request, monkeypatch) -> str:
    """A backend of the compiled module."""
    return _select(request.param, monkeypatch)


@pytest.fixture(params=["cpu", "cuda", "cuda-compact", "triton"])
def backend(request, monkeypatch) -> str:
    """A native backend: the compiled module's, or triton."""
    return _select(request.param, monkeypatch)


def _random_gaussians(n: int, seed: int) -> torch.Tensor:
    """[n, 9] with no grid layout at all (means anywhere in [-0.3, 1.3]): exact, only slower."""
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randn(n, 9, generator=gen)
    raw[:, 7:9] = torch.rand(n, 2, generator=gen) * 1.6 - 0.3
    raw[:8, 2] = torch.tensor([9.0, -9.0, 6.0, -6.0, 0.0, 0.0, 0.0, 0.0])
    return raw


def _assert_matches_reference(raw: torch.Tensor, backend: str, scale, canvas, **kwargs) -> None:
    device = _device(backend)
    expected = render.render_gaussians(raw, scale, canvas, backend="torch", **kwargs)
    out = render.render_gaussians(raw.to(device), scale, canvas, backend=backend, **kwargs)
    assert out.device == device and out.dtype == torch.float32 and out.shape == expected.shape
    assert bool(torch.isfinite(out).all())
    tolerance = TRITON_RENDER_ABS if backend == "triton" else NATIVE_RENDER_ABS
    torch.testing.assert_close(out.cpu(), expected, atol=tolerance, rtol=0)


def test_ci_builds_the_cpu_backend():
    if os.environ.get("CI", "").lower() != "true":
        pytest.skip("only enforced in CI (CI=true), where .ci/run runs install.py")
    assert render.available_backends()["cpu"] is None, render.available_backends()["cpu"]


def test_a_gpu_machine_builds_the_cuda_backend():
    """On a lent GPU, bench/device_session.sh sets GSASR_EXPECT_CUDA=1 after install.py: there the cuda tests must
    run, not skip because the build failed."""
    if os.environ.get("GSASR_EXPECT_CUDA") != "1":
        pytest.skip("only enforced where GSASR_EXPECT_CUDA=1 (bench/device_session.sh on a GPU machine)")
    assert render.available_backends()["cuda"] is None, render.available_backends()["cuda"]
    assert render.active_backend("cuda") == "cuda"


GRID_CASES = [  # (hp, wp), scale, dmax, dtype
    ((6, 8), 4.0, 0.1, torch.float32),
    ((5, 7), 3.7, 0.1, torch.float32),
    ((4, 4), 12.0, 0.05, torch.float32),
    ((9, 3), 1.5, 0.5, torch.float32),
    ((3, 5), 2.0, 2.0, torch.float32),  # window wider than the canvas
    ((1, 6), 3.0, 0.1, torch.float32),
    ((8, 8), 2.0, 0.02, torch.float32),  # window narrower than the Gaussians
    ((5, 6), 3.7, 0.1, torch.float16),
    ((5, 6), 3.7, 0.1, torch.bfloat16),
]


@pytest.mark.parametrize(("lr", "scale", "dmax", "dtype"), GRID_CASES)
def test_grid_gaussians_match_the_reference(backend, lr, scale, dmax, dtype):
    hp, wp = lr
    raw = grid_gaussians(hp, wp, seed=hp * 31 + wp).to(dtype)
    canvas = (math.floor(scale * hp), math.floor(scale * wp))
    _assert_matches_reference(raw, backend, scale, canvas, dmax=dmax)


@pytest.mark.parametrize(("lr", "scale", "dmax"), [case[:3] for case in GRID_CASES if case[3] == torch.float32]
                         + [((40, 36), 4.0, 0.1)])  # 40 x 36: many tiles, many batches of 256 candidates
def test_the_compact_cuda_gather_gives_the_scan_result_bit_for_bit(monkeypatch, lr, scale, dmax):
    """Both kernels visit the same hits in the same order (render_cuda.cu), so their sums are identical."""
    device = _device("cuda")
    hp, wp = lr
    raw = grid_gaussians(hp, wp, seed=hp * 17 + wp).to(device)
    canvas = (math.floor(scale * hp), math.floor(scale * wp))
    images = {}
    for gather in _native.CUDA_GATHERS:
        monkeypatch.setenv(_native.CUDA_GATHER_ENV_VAR, gather)
        images[gather] = render.render_gaussians(raw, scale, canvas, dmax=dmax, backend="cuda")
    assert torch.equal(images["scan"], images["compact"])


def test_the_cuda_gather_choice(monkeypatch):
    monkeypatch.delenv(_native.CUDA_GATHER_ENV_VAR, raising=False)
    assert _native.cuda_gather() == "scan"
    monkeypatch.setenv(_native.CUDA_GATHER_ENV_VAR, " Compact ")
    assert _native.cuda_gather() == "compact"
    monkeypatch.setenv(_native.CUDA_GATHER_ENV_VAR, "fast")
    with pytest.raises(InvalidInputError, match="GSASR_CUDA_GATHER='fast' is not one of scan, compact"):
        _native.cuda_gather()


def test_the_compact_gather_refuses_cpu_inputs():
    _device("cpu")
    ext = _native.load()
    params = torch.zeros(4, 11)
    boxes = ext.boxes(params, 4, 4, 0, 0, 4, 4)
    ranges = torch.tensor([[0, 0]])
    with pytest.raises(RuntimeError, match="render_compact is a CUDA kernel"):
        ext.render_compact(params, boxes, ranges, ranges, 4, _native.TILE["cuda"], 4, 4, 0, 0, 4, 4)


@pytest.mark.parametrize("dmax", [0.004, 0.008, 0.016, 0.03])
def test_bright_and_dark_gaussians_at_the_window_edge_match_the_reference(backend, dmax):
    """k sigma close to dmax, colours from ~1 (the k-sigma ellipse reaches the window) to dark (it shrinks
    inside it, and the CPU kernel skips the exact window search on that axis) to invisible."""
    raw = grid_gaussians(10, 12, seed=int(dmax * 1000), extremes=False)
    gen = torch.Generator().manual_seed(7)
    raw[:, 0:2] = torch.rand(raw.shape[0], 2, generator=gen) * 8 - 4
    raw[0::3, 3:7] = 14.0  # colour 1 - 8e-7
    raw[1::3, 3:7] = -2.0  # dark
    raw[2::6, 3] = -30.0  # alpha ~1e-13: below exp(-k^2/2) everywhere, skipped by the CPU kernel
    _assert_matches_reference(raw, backend, 4.0, (40, 48), dmax=dmax)


@pytest.mark.parametrize(("canvas", "scale", "dmax"), [((17, 23), 3.7, 0.1), ((1, 19), 3.0, 0.1),
                                                       ((19, 1), 3.0, 0.5), ((1, 1), 2.0, 0.1),
                                                       ((2, 3), 1.2, 0.1), ((40, 70), 6.0, 0.3)])
def test_gaussians_without_grid_layout_match_the_reference(backend, canvas, scale, dmax):
    _assert_matches_reference(_random_gaussians(60, seed=sum(canvas)), backend, scale, canvas, dmax=dmax)


@pytest.mark.parametrize("region", [(0, 0, 37, 45), (5, 9, 20, 11), (36, 44, 1, 1), (0, 30, 37, 15),
                                    (12, 0, 1, 45), (3, 33, 34, 12)])
def test_regions_match_the_reference(backend, region):
    raw = grid_gaussians(10, 12, seed=5)
    _assert_matches_reference(raw, backend, 3.7, (37, 45), dmax=0.2, region=region)


def test_anisotropic_scales_match_the_reference(backend):
    raw = grid_gaussians(7, 9, seed=9)
    _assert_matches_reference(raw, backend, (2.5, 4.0), (17, 36))


def test_a_large_tight_offset_grid_matches_the_reference(backend):
    # Decoder-like offsets (a fraction of a cell) over many tiles: the path the fast grid gather takes.
    raw = grid_gaussians(24, 20, seed=3, offset=0.3)
    _assert_matches_reference(raw, backend, 4.0, (96, 80))


@pytest.mark.parametrize("case", ["grid", "random", "region"])
def test_the_generic_entry_point_matches_the_reference(compiled_backend, case):
    # On the CPU, render_gaussians takes ext.render_terms; ext.render (boxes and tile ranges given, whole boxes)
    # must stay exact too.
    ext, _ = render._compiled()
    device = _device(compiled_backend)
    raw, scale, canvas, dmax, region = {
        "grid": (grid_gaussians(9, 11, seed=1), 3.7, (33, 40), 0.1, (0, 0, 33, 40)),
        "random": (_random_gaussians(80, seed=2), 3.0, (40, 70), 0.3, (0, 0, 40, 70)),
        "region": (grid_gaussians(10, 12, seed=5), 3.7, (37, 45), 0.2, (3, 33, 34, 12)),
    }[case]
    expected = render.render_gaussians(raw, scale, canvas, backend="torch", dmax=dmax, region=region)
    out = _native.render_with_ranges(ext, raw.to(device), scale, canvas, dmax, region)
    torch.testing.assert_close(out.cpu(), expected, atol=NATIVE_RENDER_ABS, rtol=0)


def test_wide_and_strongly_correlated_gaussians_match_the_reference(backend):
    # Many Gaussians with |rho| close to 1 and wide sigmas: the k-sigma ellipse of the CPU kernel must keep every
    # pixel whose float32 weight shows, despite the cancellation of the quadratic form.
    raw = grid_gaussians(12, 10, seed=11, offset=0.3)
    gen = torch.Generator().manual_seed(12)
    raw[:, 2] = torch.randn(raw.shape[0], generator=gen) * 4.0  # rho = tanh(...) mostly near +-1
    raw[:, 0:2] = torch.randn(raw.shape[0], 2, generator=gen) + 1.5  # sigma towards 1 (wide)
    _assert_matches_reference(raw, backend, 4.0, (48, 40))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_fresh_decoders_gaussians_match_the_reference(backend, dtype):
    """Real decoder output (a tiny random GSASR on a random image), as the model hands it to the renderer; bf16 as
    an amp decoder head would give it."""
    encoder, decoder = tiny_networks()
    image = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(21))
    with torch.no_grad():
        raw = decoder(encoder(image), 3.7)[0].to(dtype)
    assert raw.shape == (16 * 8 * 12, 9)
    _assert_matches_reference(raw, backend, 3.7, (math.floor(3.7 * 8), math.floor(3.7 * 12)))


def test_empty_inputs_render_black(backend):
    out = render.render_gaussians(torch.zeros(0, 9, device=_device(backend)), 2.0, (5, 6), backend=backend)
    assert torch.equal(out.cpu(), torch.zeros(3, 5, 6))


@pytest.mark.parametrize(("arch", "case_name"), golden_render_params())
def test_golden_gaussians_render_to_the_official_output(compiled_backend, arch, case_name):
    out, expected = render_golden_case(arch, case_name, compiled_backend, _device(compiled_backend))
    torch.testing.assert_close(out, expected, atol=NATIVE_GOLDEN_RENDER_ABS, rtol=0)


def test_the_extension_checks_its_inputs(compiled_backend):
    ext, _ = render._compiled()
    device = _device(compiled_backend)
    params = torch.zeros(4, 11, device=device)
    with pytest.raises(RuntimeError, match="params must be"):
        ext.boxes(params[:, :9], 4, 4, 0, 0, 4, 4)
    with pytest.raises(RuntimeError, match="float32"):
        ext.boxes(params.double(), 4, 4, 0, 0, 4, 4)
    with pytest.raises(RuntimeError, match="region"):
        ext.boxes(params, 4, 4, 0, 0, 5, 4)
    boxes = ext.boxes(params, 4, 4, 0, 0, 4, 4)
    ranges = torch.tensor([[0, 9]], device=device)  # past the 1 x 4 grid
    with pytest.raises(RuntimeError, match="outside the grid"):
        ext.render(params, boxes, ranges, torch.tensor([[0, 0]], device=device), 4, _native.TILE[compiled_backend],
                   4, 4, 0, 0, 4, 4)


# ----------------------------------------------------------------------------------------------------------------
# Loading and fallback (no build needed)
# ----------------------------------------------------------------------------------------------------------------

def test_an_unbuilt_module_is_not_compiled_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(_build, "library_path", lambda with_cuda: tmp_path / "absent.so")
    monkeypatch.delenv(_native.JIT_ENV_VAR, raising=False)
    monkeypatch.setattr(_build, "build", lambda **kwargs: pytest.fail("compiled without GSASR_JIT=1"))
    with pytest.raises(_native.NativeUnavailable, match="install.py"):
        _native.load()


def test_auto_falls_back_with_one_log_line_and_explicit_choice_raises(monkeypatch, caplog):
    monkeypatch.delenv(render.ENV_VAR, raising=False)
    monkeypatch.setattr(render, "_compiled_cache", (None, "not built for this test"))
    monkeypatch.setattr(render, "_fallback_logged", False)
    with caplog.at_level(logging.WARNING, logger="gsasr.render"):
        assert render.active_backend("cpu") == "torch"
        assert render.active_backend("cpu") == "torch"
        render.render_gaussians(torch.zeros(2, 9), 2.0, (4, 4))
    assert [r.getMessage() for r in caplog.records].count(
        "GSASR: rendering with the slower PyTorch reference: not built for this test.") == 1
    with pytest.raises(BackendUnavailableError, match="not built for this test"):
        render.render_gaussians(torch.zeros(2, 9), 2.0, (4, 4), backend="cpu")


def test_the_build_folder_is_keyed_by_versions():
    folder = _build.build_dir(False)
    assert torch.__version__ in folder.name and "cpu" in folder.name
    assert f"py{sys.version_info.major}{sys.version_info.minor}" in folder.name
    assert _build.library_path(False).parent == folder


def test_grid_width_finds_the_decoder_layout():
    assert reference.grid_width(16 * 6 * 8, (24, 32), 4.0) == 32
    assert reference.grid_width(16 * 5 * 7, (18, 25), 3.7) == 28
    assert reference.grid_width(7, (10, 10), 2.0) == 7  # no layout fits: one row (exact, slower)
