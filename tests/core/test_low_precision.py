"""The CPU bf16 path: amp="auto" follows the CPU's bf16 matrix units, weights cast once (archs/low_precision.py)
give autocast's own numbers, and amp="off" is untouched by any of it."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_networks
from tolerances import (
    BF16_FUSED_GELU_REL,
    BF16_PATH_VS_AUTOCAST_REL,
    FUSED_GLUE_ERROR_GROWTH,
    FUSED_GLUE_MAX_ERROR_GROWTH,
)

from gsasr import environment
from gsasr.archs import kernel_self_check
from gsasr.archs.low_precision import add_, cast_weights, linear, linear_gelu, linear_relu, relu_
from gsasr.model import GSASRModel, ModelInfo, resolve_amp


@pytest.fixture(params=["paper", "enhanced"])
def model(request):
    enc, dec = tiny_networks(request.param)
    return GSASRModel(enc, dec, ModelInfo(architecture="tiny"))


@pytest.mark.parametrize("units, expected", [("AMX-BF16", torch.bfloat16), ("AVX512-BF16", torch.bfloat16),
                                             (None, None)])
def test_auto_on_a_cpu_is_bf16_exactly_where_it_has_bf16_matrix_units(monkeypatch, units, expected):
    monkeypatch.setattr("gsasr.model.cpu_bf16_matrix_units", lambda: units)
    assert resolve_amp("auto", torch.device("cpu")) == expected
    assert resolve_amp("off", torch.device("cpu")) is None and resolve_amp("bf16", torch.device("cpu")) is not None


def test_bf16_units_from_the_feature_flags_or_the_older_queries(monkeypatch):
    cpu = torch._C._cpu

    def answer(flags):
        environment.cpu_bf16_matrix_units.cache_clear()
        monkeypatch.setattr(cpu, "_get_cpu_capability", lambda: flags, raising=False)
        return environment.cpu_bf16_matrix_units()

    try:
        assert answer({"amx_bf16": True, "avx512_bf16": True}) == "AMX-BF16"
        assert answer({"amx_bf16": False, "avx512_bf16": True}) == "AVX512-BF16"
        assert answer({"avx2": True}) is None
        # a torch without the flags dict: the per-feature queries, and nothing known means no bf16
        monkeypatch.delattr(cpu, "_get_cpu_capability")
        monkeypatch.setattr(cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
        environment.cpu_bf16_matrix_units.cache_clear()
        assert environment.cpu_bf16_matrix_units() == "AVX512-BF16"
        monkeypatch.delattr(cpu, "_is_avx512_bf16_supported")
        environment.cpu_bf16_matrix_units.cache_clear()
        assert environment.cpu_bf16_matrix_units() is None
    finally:
        monkeypatch.undo()
        environment.cpu_bf16_matrix_units.cache_clear()


def test_cast_weights_swaps_restores_and_caches(model):
    linear = model.decoder.scale_mlp[0]
    original = linear.weight
    with cast_weights(model, torch.bfloat16):
        first = linear.weight
        assert first.dtype == torch.bfloat16 and torch.equal(first, original.detach().bfloat16())
        conv = model.decoder.UPNet[0].weight
        assert conv.dtype == torch.bfloat16 and conv.is_contiguous(memory_format=torch.channels_last)
        assert model.decoder.gs_embedding.dtype == torch.float32  # only Linear and Conv2d parameters are cast
    assert linear.weight is original
    with cast_weights(model, torch.bfloat16):
        assert linear.weight is first  # cached
    with torch.no_grad():
        original.mul_(2)  # an in-place update invalidates the copies
    with cast_weights(model, torch.bfloat16):
        assert torch.equal(linear.weight, original.detach().bfloat16())
    with pytest.raises(RuntimeError, match="boom"), cast_weights(model, torch.bfloat16):
        raise RuntimeError("boom")
    assert linear.weight is original


def test_cast_weights_of_a_model_made_under_inference_mode(model):
    """ComfyUI runs its nodes, the loader included, under torch.inference_mode(): the parameters are then inference
    tensors, which keep no version counter. bf16 must still run, and give the same numbers, and an in-place weight
    update must still be seen (nothing is cached for such a model)."""
    x = torch.rand(1, 3, 16, 16)
    with torch.inference_mode():
        expected = model.gaussians(x, 2.0, amp="bf16")
        enc, dec = tiny_networks(model.decoder.form)
        made_there = GSASRModel(enc, dec, ModelInfo(architecture="tiny"))
        made_there.load_state_dict(model.state_dict())
        assert all(p.is_inference() for p in made_there.parameters())
        assert torch.equal(made_there.gaussians(x, 2.0, amp="bf16"), expected)
        made_there.decoder.mlp_block_rgb[0].weight.mul_(2)
        assert not torch.equal(made_there.gaussians(x, 2.0, amp="bf16"), expected)


def test_weights_are_cast_once_per_image_not_once_per_tile(model, monkeypatch):
    """Uncacheable weights (made under inference_mode) are cast once for all the tiles of an image."""
    from gsasr.archs import low_precision

    with torch.inference_mode():
        enc, dec = tiny_networks(model.decoder.form)
        made_there = GSASRModel(enc, dec, ModelInfo(architecture="tiny"))
    casts, tiles = [], []
    real_cast = low_precision._cast
    monkeypatch.setattr(low_precision, "_cast", lambda *args: casts.append(args[0]) or real_cast(*args))
    made_there.upscale(torch.rand(1, 3, 40, 40), 2.0, tile=12, amp="bf16",
                       progress=lambda done, total: tiles.append(total))
    assert tiles and tiles[-1] > 1  # it was tiled
    assert len(casts) == len(low_precision._slots(made_there))  # each weight cast once, for every tile


def test_bf16_path_matches_plain_autocast(model, monkeypatch):
    """Weights cast once, channels-last convolutions, stacked attention projections and the bf16 workspace heads
    against plain autocast of the float32 modules: the same roundings in (almost) the same order. (PyTorch's glue:
    the fused kernels, tested below, round a few LayerNorm outputs the other way.)"""
    monkeypatch.setattr("gsasr.model.cpu_network_kernels", lambda: None)
    torch.manual_seed(1)
    x = torch.rand(1, 3, 16, 24)
    with torch.inference_mode():
        fast = model.gaussians(x, 2.5, amp="bf16")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = model.decoder(model.encoder(x), 2.5).float()
        exact = model.gaussians(x, 2.5, amp="off")
    assert fast.dtype == torch.float32
    scale = exact.abs().amax(dim=(0, 1))
    assert ((fast - plain).abs().amax(dim=(0, 1)) / scale).max() <= BF16_PATH_VS_AUTOCAST_REL
    # and it is a bf16 run, not float32
    assert not torch.equal(fast, exact)


class CountingKernels:
    """The compiled module, counting the calls of its network kernels."""

    def __init__(self, module):
        self.module, self.calls = module, {"residual_layer_norm": 0, "rope_": 0, "window_attention": 0}

    def __getattr__(self, name):
        if name in self.calls:
            self.calls[name] += 1
        return getattr(self.module, name)


def wide_head_model(form: str) -> GSASRModel:
    """A small model whose attention heads have 32 channels, the width the window attention kernel takes."""
    from gsasr.archs.decoder import GaussianDecoder
    from gsasr.archs.encoder_edsr import EDSREncoder

    torch.manual_seed(0)
    decoder = GaussianDecoder(form=form, in_channels=16, channels=64, num_heads=2, window_size=4,
                              num_crossattn_blocks=1, num_crossattn_layers=2, num_selfattn_blocks=1,
                              num_selfattn_layers=2)
    return GSASRModel(EDSREncoder(num_feat=16, num_block=1), decoder, ModelInfo(architecture="tiny"))


def run_with_and_without_kernels(model: GSASRModel, monkeypatch, module) -> dict[str, int]:
    """Gaussians of a small image in float32, in bf16 with PyTorch's glue and attention, and in bf16 with the
    compiled kernels (on any CPU here: their generic loops where it has no AVX-512); asserts that the kernels leave
    the error from float32 its size (they only move some roundings by one bf16 step) and returns their calls."""
    torch.manual_seed(1)
    x = torch.rand(1, 3, 16, 24)
    kernels = CountingKernels(module)
    assert kernel_self_check.check(kernels).describe() == "self-check passed"  # before counting the model's calls
    kernels.calls = dict.fromkeys(kernels.calls, 0)
    with torch.inference_mode():
        exact = model.gaussians(x, 2.5, amp="off")
        monkeypatch.setattr("gsasr.model.cpu_network_kernels", lambda: None)
        plain_glue = model.gaussians(x, 2.5, amp="bf16")
        monkeypatch.setattr("gsasr.model.cpu_network_kernels", lambda: kernels)
        fused_glue = model.gaussians(x, 2.5, amp="bf16")
    scale = exact.abs().amax(dim=(0, 1))
    for measure, growth in ((lambda e: e.pow(2).mean(dim=(0, 1)).sqrt(), FUSED_GLUE_ERROR_GROWTH),
                            (lambda e: e.abs().amax(dim=(0, 1)), FUSED_GLUE_MAX_ERROR_GROWTH)):
        fused_error, plain_error = measure(fused_glue - exact) / scale, measure(plain_glue - exact) / scale
        assert (fused_error <= growth * plain_error).all()
    assert not torch.equal(fused_glue, exact)
    return kernels.calls


@pytest.mark.parametrize("heads", ["narrow", "32 wide"])
def test_fused_glue_changes_only_roundings(model, monkeypatch, heads, network_kernels):
    """The decoder: residual + LayerNorm and (enhanced form) RoPE kernels, and its attention in the window attention
    kernel (the paper form's with its relative-position bias) where this CPU can run it; heads of 12 channels (the
    tiny model: the kernels' generic and masked paths) and of 32 (the released enhanced models')."""
    if heads == "32 wide":
        model = wide_head_model(model.decoder.form)
    calls = run_with_and_without_kernels(model, monkeypatch, network_kernels)
    enhanced = model.decoder.form == "enhanced"
    assert calls["residual_layer_norm"] > 0
    assert (calls["rope_"] > 0) == enhanced
    assert (calls["window_attention"] > 0) == network_kernels.attention_available()


def test_hat_attention_kernels_change_only_roundings(monkeypatch, network_kernels):
    """HAT-L's window (HAB) and overlapping (OCAB: 16 queries, 36 keys per window here) attentions, RoPE in place
    and the window attention kernel, and the residual + LayerNorm kernels on its float32 token stream, on a small HAT
    encoder whose heads have 32 channels."""
    from conftest import tiny_networks

    from gsasr.archs.encoder_hat import HATEncoder

    torch.manual_seed(0)
    encoder = HATEncoder(embed_dim=64, depths=(2, 2), num_heads=(2, 2), window_size=4, squeeze_factor=8,
                         num_feat=16).eval()
    model = GSASRModel(encoder, tiny_networks("paper")[1], ModelInfo(architecture="tiny"))
    calls = run_with_and_without_kernels(model, monkeypatch, network_kernels)
    assert calls["rope_"] > 0
    assert (calls["window_attention"] > 0) == network_kernels.attention_available()


def test_off_is_untouched_by_an_earlier_bf16_run(model):
    x = torch.rand(1, 3, 16, 16)
    with torch.inference_mode():
        before = model.gaussians(x, 3.0, amp="off")
        model.gaussians(x, 3.0, amp="bf16")
        assert torch.equal(model.gaussians(x, 3.0, amp="off"), before)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bf16_relu_through_the_bit_pattern_equals_relu():
    x = torch.randn(4096).bfloat16()
    x[:4] = torch.tensor([-0.0, float("-inf"), float("inf"), 0.0])
    expected = torch.relu(x)
    out = relu_(x)
    assert out is x and torch.equal(out, expected) and not out.signbit().any()
    y = torch.randn(100)
    assert torch.equal(relu_(y.clone()), torch.relu(y))  # other dtypes: PyTorch's own


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_products_equal_the_modules(dtype):
    """linear and linear_relu are bitwise the module (then ReLU); linear_gelu rounds once where the module rounds
    twice, so in bf16 it is within one bf16 rounding of the module, and closer to the float32 result."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 96).to(dtype)
    for shape in ((50, 64), (3, 7, 64)):
        x = torch.randn(shape).to(dtype)
        with torch.inference_mode():
            assert torch.equal(linear(x, layer.weight, layer.bias), layer(x))
            assert torch.equal(linear_relu(x, layer), torch.relu(layer(x)))
            fused, module = linear_gelu(x, layer), torch.nn.functional.gelu(layer(x))
            if dtype == torch.float32:
                assert torch.equal(fused, module)
            else:
                exact = torch.nn.functional.gelu(torch.nn.functional.linear(x.float(), layer.weight.float(),
                                                                            layer.bias.float()))
                peak = exact.abs().max()
                assert (fused.float() - module.float()).abs().max() <= BF16_FUSED_GELU_REL * peak
                assert (fused.float() - exact).abs().max() <= (module.float() - exact).abs().max()


def test_stream_plus_bf16_branch_is_the_float32_sum():
    x = torch.randn(5, 7)
    term = torch.randn(5, 7).bfloat16()
    expected = x + term
    assert add_(x, term) is x and torch.equal(x, expected)


@pytest.mark.parametrize("encoder", ["HAT", "SWIN"])
def test_transformer_encoders_keep_a_float32_stream_under_cpu_autocast(encoder):
    """CPU autocast keeps a LayerNorm of a bf16 input in bf16, CUDA autocast (the official AMP) runs it in float32:
    the token stream that starts at the patch embedding's LayerNorm stays float32, as in the official AMP, and
    float32 / float64 models are untouched."""
    from gsasr.archs.encoder_hat import PatchEmbedNorm
    from gsasr.archs.encoder_swinir import PatchEmbed

    embed = (PatchEmbedNorm if encoder == "HAT" else PatchEmbed)(8)
    x = torch.randn(1, 4, 4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert embed(x.bfloat16()).dtype == torch.float32
        assert torch.equal(embed(x.bfloat16()), embed.norm(x.bfloat16().float()))
    assert torch.equal(embed(x), embed.norm(x))
    assert embed.double()(x.double()).dtype == torch.float64
