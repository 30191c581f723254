"""Gaussian decoder (gsasr/archs/decoder.py): shapes, checkpoint contract, config inference, the closed-form scale
attention, chunking and batching invariance, autocast, and parity of raw Gaussians with the official model.

The end-to-end image parity (encoder + decoder + renderer, every architecture) is in test_golden_parity.py.
"""
from __future__ import annotations

import pytest
import torch
from conftest import golden_folder, load_golden
from tolerances import DECODER_BATCH_ABS, DECODER_SCALE_ATTN_ABS, DECODER_WINOGRAD_ABS

from gsasr.archs import winograd
from gsasr.archs.decoder import (
    GaussianDecoder,
    ScaleConditionAttention,
    _gaussian_head,
    _run_head,
    infer_decoder_config,
)
from gsasr.archs.encoder_edsr import EDSREncoder
from gsasr.archs.low_precision import cast_weights
from gsasr.archs.workspace import Workspace

TINY = dict(in_channels=16, channels=24, num_heads=2, window_size=4, num_crossattn_blocks=1,
            num_crossattn_layers=2, num_selfattn_blocks=1, num_selfattn_layers=2)
FORMS = ["paper", "enhanced"]
ALL_ARCHS = ["EDSR", "RDN", "SWIN", "EDSR_DIV2K", "RDN_DIV2K", "SWIN_DIV2K", "HATL_SA1B"]


def _tiny(form: str, seed: int = 0, **overrides) -> GaussianDecoder:
    torch.manual_seed(seed)
    return GaussianDecoder(form=form, **{**TINY, **overrides}).eval()


def _have_golden() -> bool:
    return (golden_folder() / "golden.py").is_file()


# -- shapes and output layout ------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", FORMS)
def test_tiny_shapes(form):
    dec = _tiny(form)
    feat = torch.randn(2, 16, 8, 12)
    with torch.no_grad():
        out = dec(feat, torch.tensor([2.0, 3.5]))
        single = dec(feat[:1], 3.0)
    assert out.shape == (2, 16 * 8 * 12, 9) and out.dtype == torch.float32
    assert single.shape == (1, 16 * 8 * 12, 9)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("form", FORMS)
def test_means_are_reference_points_plus_offsets(form):
    """With the mean head's last layer zeroed, every mean is its cell centre on the 4h x 4w grid, row-major."""
    dec = _tiny(form)
    with torch.no_grad():
        dec.mlp_block_mean[4].weight.zero_()
        dec.mlp_block_mean[4].bias.copy_(torch.tensor([0.25, -0.5]))  # offsets in Gaussian-grid cells
        out = dec(torch.randn(1, 16, 4, 8), 2.0)[0]
    gh, gw = 16, 32
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    expected = torch.stack([(xs.flatten() + 0.5 + 0.25) / gw, (ys.flatten() + 0.5 - 0.5) / gh], -1)
    torch.testing.assert_close(out[:, 7:], expected, rtol=0, atol=1e-6)


def test_rejects_sizes_that_are_not_window_multiples():
    dec = _tiny("enhanced")
    with pytest.raises(ValueError, match="multiple"):
        dec(torch.randn(1, 16, 6, 8), 2.0)
    with pytest.raises(ValueError, match="shape"):
        dec(torch.randn(2, 16, 4, 4), torch.tensor([2.0, 3.0, 4.0]))


def test_rejects_bad_constructor_arguments():
    with pytest.raises(ValueError, match="form"):
        GaussianDecoder(form="ultra", **TINY)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        GaussianDecoder(form="paper", **{**TINY, "num_heads": 5})


# -- invariances: per-image scale, chunking ----------------------------------------------------------------------

@pytest.mark.parametrize("form", FORMS)
def test_batch_with_per_image_scales_equals_single_images(form):
    dec = _tiny(form)
    feat = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        both = dec(feat, torch.tensor([1.5, 7.0]))
        first, second = dec(feat[:1], 1.5), dec(feat[1:], 7.0)
    assert (both - torch.cat([first, second])).abs().max() <= DECODER_BATCH_ABS
    assert (first - second).abs().max() > 1e-3  # the scale does condition the output


@pytest.fixture(params=["direct", "winograd"])
def conv_kind(request, monkeypatch):
    """Run a test with the seed-grid convolutions direct, or as Winograd convolutions (winograd.py), which the tiny
    decoder (24 channels) would otherwise be too narrow for. Yields the list of Winograd calls made."""
    calls = []
    if request.param == "winograd":
        monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
        conv3x3 = winograd.conv3x3

        def counted(*args, **kwargs):
            calls.append(args[0].shape)
            return conv3x3(*args, **kwargs)

        monkeypatch.setattr(winograd, "conv3x3", counted)
    yield calls
    assert bool(calls) == (request.param == "winograd")  # the fixture did choose the path


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("feat_hw", [(12, 4), (8, 12)])  # one window per window row; three
def test_chunking_changes_nothing(form, feat_hw, conv_kind):
    """Strips of rows through UPNet + heads, chunks of (rolled) windows through attention and strips of window rows
    through the seed-grid convolutions give the same numbers, with either kind of convolution."""
    dec = _tiny(form)
    feat = torch.randn(2, 16, *feat_hw)
    with torch.no_grad():
        whole = dec(feat, torch.tensor([2.0, 3.0]))
        # one window at a time; two windows (a chunk straddles rolled windows' sources); more than one image holds
        for windows in (1, 2, 100):
            dec.max_tokens_per_chunk = windows * 16
            for rows in (1, 5):  # one row per strip; several rows with a ragged last strip
                dec.max_gaussians_per_chunk = rows * 16 * 4 * 2
                assert torch.equal(dec(feat, torch.tensor([2.0, 3.0])), whole)


@pytest.mark.parametrize(("window", "grid_convs_fast"), [(4, True), (3, False)])
def test_seed_grid_convs_use_winograd_only_with_even_windows(window, grid_convs_fast, monkeypatch):
    """Strips of window rows start on even rows only if the window is even; otherwise Winograd tiles would sit
    differently per strip height, so those convs stay direct. UPNet's convs run on even-aligned rows always."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    transformed = []
    transform_weight = winograd.transform_weight
    monkeypatch.setattr(winograd, "transform_weight",
                        lambda weight, *args: transformed.append(weight) or transform_weight(weight, *args))
    dec = _tiny("enhanced", window_size=window)
    with torch.no_grad():
        dec(torch.randn(1, 16, 2 * window, 2 * window), 2.5)
    fast = {id(weight) for weight in transformed}
    assert id(dec.UPNet[0].weight) in fast and id(dec.UPNet[2].weight) in fast
    grid_convs = [dec.conv_final.weight] + [block.conv.weight for block in dec.gs_selfattn_blocks]
    assert all((id(weight) in fast) == grid_convs_fast for weight in grid_convs)


@pytest.mark.parametrize("form", FORMS)
def test_winograd_decoder_matches_direct(form, monkeypatch):
    """The whole decoder with Winograd seed-grid convolutions against the direct ones: float32 rounding only."""
    dec = _tiny(form)
    feat = torch.randn(1, 16, 8, 12)
    with torch.no_grad():
        direct = dec(feat, 3.0)
        monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
        fast = dec(feat, 3.0)
    assert not torch.equal(fast, direct)  # the other path did run
    assert (fast - direct).abs().max() <= DECODER_WINOGRAD_ABS


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_heads_in_a_workspace_equal_the_modules(dtype):
    """The Gaussian heads run with their hidden activations in reused buffers: the same numbers as the modules, for
    strips of several sizes through one workspace (a buffer grows, then is reused by a smaller strip)."""
    torch.manual_seed(0)
    head = _gaussian_head(24, 3).to(dtype)
    workspace = Workspace("cpu")
    with torch.no_grad():
        for tokens in (7, 50, 3):
            x = torch.randn(2, tokens, 24, dtype=dtype)
            assert torch.equal(_run_head(head, x, workspace), head(x))


def test_heads_under_autocast_run_the_modules():
    torch.manual_seed(0)
    head = _gaussian_head(24, 2)
    x = torch.randn(1, 10, 24)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = _run_head(head, x, Workspace("cpu"))
        assert out.dtype == torch.bfloat16 and torch.equal(out, head(x))


def test_chunk_sizes_depend_on_the_device_unless_set():
    """Small chunks on a CPU (activations stay in cache and in the heap), large ones on accelerators (fewer kernel
    launches); an explicit setting wins everywhere."""
    dec = _tiny("enhanced")
    cpu_gaussians, cpu_tokens = dec._chunk_sizes(torch.device("cpu"))
    gpu_gaussians, gpu_tokens = dec._chunk_sizes(torch.device("cuda"))
    assert (cpu_gaussians, cpu_tokens) == (1 << 13, 1 << 12)
    assert gpu_gaussians >= 16 * cpu_gaussians and gpu_tokens >= 16 * cpu_tokens
    dec.max_gaussians_per_chunk, dec.max_tokens_per_chunk = 100, 7
    assert dec._chunk_sizes(torch.device("cpu")) == dec._chunk_sizes(torch.device("mps")) == (100, 7)


@pytest.mark.parametrize("rows", [1, 2, 5])
def test_upsampling_strips_convolve_each_seed_row_once(rows, monkeypatch):
    """UPNet's first conv keeps the rows two strips share: over all strips it outputs each seed row exactly once."""
    dec = _tiny("paper")
    feat = torch.randn(1, 16, 12, 8)
    computed = []
    conv2d = torch.nn.functional.conv2d

    def counting_conv2d(x, weight, *args, **kwargs):
        out = conv2d(x, weight, *args, **kwargs)
        if weight is dec.UPNet[0].weight:
            computed.append(out.shape[2])
        return out

    with torch.no_grad():
        whole = dec(feat, 2.0)
        monkeypatch.setattr(torch.nn.functional, "conv2d", counting_conv2d)
        dec.max_gaussians_per_chunk = rows * 16 * 8
        assert torch.equal(dec(feat, 2.0), whole)
    assert sum(computed) == 12  # each of the 12 seed rows once (one strip ahead, so the last may compute none)


@pytest.mark.parametrize("form", FORMS)
def test_runs_under_cpu_bfloat16_autocast(form):
    dec = _tiny(form)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = dec(torch.randn(1, 16, 4, 8), torch.tensor([3.0]))
    assert out.dtype == torch.float32 and out.shape == (1, 16 * 32, 9) and torch.isfinite(out).all()


# -- the closed-form scale attention -----------------------------------------------------------------------------

def test_scale_attention_equals_multihead_attention():
    """The official nn.MultiheadAttention with keys = values = the scale embedding, on random everything."""
    torch.manual_seed(1)
    dim, heads, batch, tokens = 24, 3, 2, 16
    ours = ScaleConditionAttention(dim)  # nn.MultiheadAttention's initialisation, plus non-zero biases
    with torch.no_grad():
        ours.in_proj_bias.normal_(std=0.1)
        ours.out_proj.bias.normal_(std=0.1)
    mha = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
    mha.load_state_dict(ours.state_dict(), strict=True)
    query = torch.randn(batch, tokens, dim) * 3
    embedding = torch.randn(batch, dim)
    kv = embedding[:, None, :].expand(batch, tokens, dim)
    with torch.no_grad():
        expected, _ = mha(query, kv, kv)
        got = ours(embedding)[:, None, :].expand_as(expected)
    assert (got - expected).abs().max() <= DECODER_SCALE_ATTN_ABS


# -- checkpoint contract and config inference --------------------------------------------------------------------

TINY_VARIANTS = [
    dict(form="paper"),
    dict(form="enhanced"),
    dict(form="paper", num_heads=3, window_size=6, num_crossattn_blocks=2, num_selfattn_layers=3),
    dict(form="enhanced", channels=32, num_heads=2, num_crossattn_blocks=2, num_crossattn_layers=4,
         num_selfattn_blocks=2, in_channels=8),
]


@pytest.mark.parametrize("variant", TINY_VARIANTS, ids=lambda v: "-".join(f"{k}{v[k]}" for k in v))
def test_infer_config_round_trip(variant):
    kwargs = {**TINY, **variant}
    torch.manual_seed(0)
    src = GaussianDecoder(**kwargs).eval()
    sd = src.state_dict()
    assert infer_decoder_config(sd) == kwargs
    dst = GaussianDecoder(**infer_decoder_config(sd)).eval()
    dst.load_state_dict(sd, strict=True)
    feat = torch.randn(1, kwargs["in_channels"], 2 * kwargs["window_size"], kwargs["window_size"])
    with torch.no_grad():
        assert torch.equal(src(feat, 2.5), dst(feat, 2.5))


def _strip(sd: dict, *patterns: str) -> dict:
    return {k: v for k, v in sd.items() if not any(p in k for p in patterns)}


@pytest.mark.parametrize("form", FORMS)
def test_infer_config_names_what_is_wrong(form):
    sd = _tiny(form).state_dict()
    with pytest.raises(ValueError, match="gs_embedding"):
        infer_decoder_config(_strip(sd, "gs_embedding"))
    with pytest.raises(ValueError, match="rope_freqs"):
        infer_decoder_config(_strip(sd, "rope_freqs", "relative_position_bias_table"))
    with pytest.raises(ValueError, match="gs_selfattn_blocks"):
        infer_decoder_config(_strip(sd, "gs_selfattn_blocks"))
    with pytest.raises(ValueError, match="gs_embedding"):
        infer_decoder_config({**sd, "gs_embedding": torch.zeros(15, 24)})
    with pytest.raises(ValueError, match="gs_embedding"):
        infer_decoder_config(EDSREncoder(num_block=1).state_dict())


def _manifest_state_dict(arch: str) -> tuple[list, dict]:
    """The official decoder keys of ``arch`` as (rows, meta tensors of the right shape and dtype)."""
    rows = [r for r in load_golden().manifest(arch) if r[0] == "decoder"]
    sd = {key: torch.empty(shape, dtype=getattr(torch, dtype), device="meta") for _, key, shape, dtype, _ in rows}
    return rows, sd


@pytest.mark.skipif(not _have_golden(), reason="no golden data (../shared/golden or tests/golden)")
@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_state_dict_matches_the_official_contract(arch):
    """Same keys in the same order, same shapes, dtypes and param/buffer kinds: strict loading works."""
    rows, sd = _manifest_state_dict(arch)
    with torch.device("meta"):
        dec = GaussianDecoder(**infer_decoder_config(sd))
    ours = dec.state_dict()
    assert list(ours) == [key for _, key, *_ in rows]
    buffers = {name for name, _ in dec.named_buffers()}
    for _, key, shape, dtype, kind in rows:
        assert tuple(ours[key].shape) == shape and str(ours[key].dtype) == f"torch.{dtype}", key
        assert (key in buffers) == (kind == "buffer"), key
    dec.load_state_dict(sd, strict=True, assign=True)


def test_heads_with_weights_cast_once_equal_the_modules():
    """Under autocast with the weights already in bf16 (low_precision.cast_weights) the heads run in bf16 (fused
    products on a CPU) and give autocast's own numbers."""
    torch.manual_seed(0)
    head = _gaussian_head(24, 2)
    x = torch.randn(1, 10, 24)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = head(x)
        with cast_weights(head, torch.bfloat16):
            workspace = Workspace("cpu")
            out = _run_head(head, x.bfloat16(), workspace)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
