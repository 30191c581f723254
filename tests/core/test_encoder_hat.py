"""HAT-L encoder with RoPE: shapes, the released quirks (unmasked shifted windows, OCAB's 24-grid RoPE), config
inference, strict loading of the official layout, bf16 autocast.

The blocks are checked against a naive re-statement of the official computation (explicit softmax, RoPE in its
real cos/sin form, OCAB windows cut with nn.Unfold as the official code does). Parity of the full released model
with the official outputs is checked in test_golden_parity.py.
"""
from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_encoder_shapes, load_golden
from tolerances import ENCODER_REFERENCE_ABS, HAT_BF16_AUTOCAST_REL

from gsasr.archs.blocks import window_partition, window_reverse
from gsasr.archs.encoder_edsr import EDSREncoder
from gsasr.archs.encoder_hat import HAB, OCAB, HATEncoder, infer_hat_config
from gsasr.errors import InvalidInputError

# squeeze_factor 8: the released 32 would leave 24 // 32 = 0 channels in the channel attention
TINY = dict(num_in_ch=3, embed_dim=24, depths=(2, 2), num_heads=(2, 2), window_size=4, compress_ratio=3,
            squeeze_factor=8, conv_scale=0.01, overlap_ratio=0.5, mlp_ratio=2.0, num_feat=16)


def _tiny(seed: int = 0, **overrides) -> HATEncoder:
    torch.manual_seed(seed)
    return HATEncoder(**{**TINY, **overrides}).eval()


def test_shape_at_multiples_of_the_window():
    enc = _tiny()
    assert enc.window_size == 4 and enc.out_channels == 16
    assert_encoder_shapes(enc, [(1, 3, 4, 4), (2, 3, 8, 12), (1, 3, 16, 4)])


def test_released_attributes():
    assert inspect.signature(HATEncoder).parameters["window_size"].default == 16
    assert inspect.signature(HATEncoder).parameters["num_feat"].default == 64


def test_size_not_a_multiple_of_the_window_is_refused():
    with pytest.raises(InvalidInputError, match="multiple of 4"):
        _tiny()(torch.rand(1, 3, 8, 6))


# ----------------------------------------------------------------------------------------------------------------
# Naive statement of the official blocks
# ----------------------------------------------------------------------------------------------------------------

def _grid(count: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.arange(count)
    return (t % width).float(), (t // width).float()


def _rope_real(x: torch.Tensor, freqs: torch.Tensor, pos: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate channel pairs (2k, 2k+1) of (B, heads, n, d) by t_x * fx + t_y * fy, written with cos and sin."""
    tx, ty = pos
    angle = tx[None, :, None] * freqs[0][:, None, :] + ty[None, :, None] * freqs[1][:, None, :]  # (heads, n, d/2)
    cos, sin = angle.cos(), angle.sin()
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def _attend(q, k, v, freqs, q_pos, k_pos):
    q, k = _rope_real(q, freqs, q_pos), _rope_real(k, freqs, k_pos)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # no bias, no mask
    return scores.softmax(-1) @ v


def _naive_hab(block: HAB, x: torch.Tensor) -> torch.Tensor:
    b, h, w, c = x.shape
    ws, s, attn = block.window_size, block.shift_size, block.attn
    heads, n = attn.num_heads, ws * ws
    y = block.norm1(x)
    conv = block.conv_block(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    if s:
        y = torch.roll(y, (-s, -s), (1, 2))
    q, k, v = attn.qkv(window_partition(y, ws)).reshape(-1, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    pos = _grid(n, ws)
    out = attn.proj(_attend(q, k, v, attn.rope_freqs, pos, pos).transpose(1, 2).reshape(-1, n, c))
    y = window_reverse(out, ws, h, w)
    if s:
        y = torch.roll(y, (s, s), (1, 2))
    x = x + y + block.conv_scale * conv
    return x + block.mlp(block.norm2(x))


def _naive_ocab(block: OCAB, x: torch.Tensor) -> torch.Tensor:
    b, h, w, c = x.shape
    ws, ows, heads = block.window_size, block.overlap_win_size, block.num_heads
    d = c // heads
    q, k, v = block.qkv(block.norm1(x)).chunk(3, dim=-1)
    q = window_partition(q, ws).reshape(-1, ws * ws, heads, d).transpose(1, 2)
    # the official cut: nn.Unfold on the NCHW k|v image with zero padding (ows - ws) / 2
    kv = F.unfold(torch.cat([k, v], -1).permute(0, 3, 1, 2), ows, padding=(ows - ws) // 2, stride=ws)
    kv = kv.view(b, 2, heads, d, ows * ows, -1).permute(1, 0, 5, 2, 4, 3).reshape(2, -1, heads, ows * ows, d)
    grid = max(ws, ows)
    # [QUIRK] the queries' positions are the first ws*ws cells of the grid-wide grid, not their own ws-grid
    out = _attend(q, kv[0], kv[1], block.rope_freqs, _grid(ws * ws, grid), _grid(ows * ows, grid))
    x = x + block.proj(window_reverse(out.transpose(1, 2).reshape(-1, ws * ws, c), ws, h, w))
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("hw", [(4, 4), (8, 12), (12, 4)])
@pytest.mark.parametrize("shift", [0, 2])
def test_hab_matches_naive_statement(hw, shift):
    torch.manual_seed(1)
    block = HAB(dim=16, num_heads=2, window_size=4, shift_size=shift, compress_ratio=2, squeeze_factor=4,
                conv_scale=0.5, mlp_ratio=2.0).eval()  # a large conv_scale so that the CAB branch matters
    assert torch.equal(block.attn.rope_t_x, _grid(16, 4)[0]) and torch.equal(block.attn.rope_t_y, _grid(16, 4)[1])
    x = torch.randn(2, *hw, 16)
    with torch.no_grad():
        err = (block(x) - _naive_hab(block, x)).abs().max().item()
    assert err <= ENCODER_REFERENCE_ABS


@pytest.mark.parametrize("hw", [(8, 8), (8, 24), (16, 8)])
@pytest.mark.parametrize("window, ratio", [(4, 0.5), (8, 0.25), (4, 0.0), (4, 1.0)])
def test_ocab_matches_naive_statement(hw, window, ratio):
    torch.manual_seed(2)
    block = OCAB(dim=16, num_heads=2, window_size=window, overlap_ratio=ratio, mlp_ratio=2.0).eval()
    grid = max(window, block.overlap_win_size)
    assert block.rope_t_x.numel() == grid * grid and torch.equal(block.rope_t_x, _grid(grid * grid, grid)[0])
    x = torch.randn(2, *hw, 16)
    with torch.no_grad():
        err = (block(x) - _naive_ocab(block, x)).abs().max().item()
    assert err <= ENCODER_REFERENCE_ABS


def _naive_encoder(enc: HATEncoder, x: torch.Tensor) -> torch.Tensor:
    first = enc.conv_first(x)
    feat = enc.patch_embed.norm(first.permute(0, 2, 3, 1))
    for group in enc.layers:
        y = feat
        for block in group.residual_group.blocks:
            y = _naive_hab(block, y)
        y = _naive_ocab(group.residual_group.overlap_attn, y)
        feat = group.conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) + feat  # the group's long skip
    body = enc.conv_after_body(enc.norm(feat).permute(0, 3, 1, 2))
    return F.leaky_relu(enc.conv_before_upsample[0](body + first), 0.01)


def test_encoder_matches_naive_statement():
    enc = _tiny(seed=4, depths=(2, 3), num_heads=(2, 3), conv_scale=0.3)
    x = torch.rand(2, 3, 8, 12)
    with torch.no_grad():
        err = (enc(x) - _naive_encoder(enc, x)).abs().max().item()
    assert err <= ENCODER_REFERENCE_ABS


def test_shifted_blocks_attend_across_the_border_without_mask():
    """[QUIRK] With the shift and no mask, a token's output depends on tokens that wrap around the image edge."""
    torch.manual_seed(3)
    block = HAB(dim=16, num_heads=2, window_size=4, shift_size=2, compress_ratio=2, squeeze_factor=4,
                conv_scale=0.0, mlp_ratio=2.0).eval()  # no conv branch: only attention mixes tokens
    x = torch.randn(1, 8, 8, 16)
    x2 = x.clone()
    x2[0, 7, 7] += torch.randn(16)  # bottom-right pixel: after the roll it shares a window with the top-left one
    with torch.no_grad():
        moved = (block(x2) - block(x))[0, 0, 0].abs().max().item()
    assert moved > 1e-3


# ----------------------------------------------------------------------------------------------------------------
# Configuration and loading
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [
    {},
    dict(depths=(1, 3), num_heads=(2, 3), mlp_ratio=1.5),
    dict(window_size=8, overlap_ratio=0.25, compress_ratio=4, squeeze_factor=6),
    dict(depths=(1,), num_heads=(6,), overlap_ratio=0.0, num_feat=8, num_in_ch=1),
])
def test_infer_config_round_trip(overrides):
    kwargs = {**TINY, **overrides}
    sd = _tiny(**overrides).state_dict()
    assert infer_hat_config(sd) == kwargs
    HATEncoder(**infer_hat_config(sd)).load_state_dict(sd, strict=True)


@pytest.fixture(scope="module")
def golden_hat():
    golden = load_golden()
    try:
        rows = [r for r in golden.manifest("HATL_SA1B") if r[0] == "encoder"]
    except FileNotFoundError:
        pytest.skip("no HATL_SA1B golden keys in ../shared/golden or tests/golden")
    return rows, golden.state_dicts("HATL_SA1B")[0]


def test_golden_state_dict_loads_strictly(golden_hat):
    rows, sd = golden_hat
    cfg = infer_hat_config(sd)
    released = {name: p.default for name, p in inspect.signature(HATEncoder).parameters.items()}
    released.pop("rope_theta")  # not inferable; only shapes the initial frequencies
    assert cfg == released
    enc = HATEncoder(**cfg)
    # same keys, order, shapes and dtypes as the official checkpoint (spec A.7), buffers included
    ours = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in enc.state_dict().items()]
    assert ours == [(key, shape, dtype) for _part, key, shape, dtype, _kind in rows]
    enc.load_state_dict(sd, strict=True)
    assert sum(p.numel() for p in enc.parameters()) == 45_522_352  # spec A.2
    assert enc.window_size == 16 and enc.out_channels == 64


@pytest.mark.parametrize("foreign", ["edsr", "empty", "hat_without_overlap_attention"])
def test_foreign_state_dict_is_refused(foreign):
    if foreign == "edsr":
        sd = EDSREncoder(num_feat=8, num_block=1).state_dict()
    elif foreign == "empty":
        sd = {}
    else:
        sd = {k: v for k, v in _tiny().state_dict().items() if ".overlap_attn." not in k}
    with pytest.raises(ValueError, match="key '.*' is missing"):
        infer_hat_config(sd)


@pytest.mark.parametrize("bad", [dict(num_heads=(4, 4)),  # head_dim 6: RoPE needs a multiple of 4
                                 dict(window_size=4, overlap_ratio=0.25),  # overlap of 1 pixel cannot be centred
                                 dict(squeeze_factor=32)])  # 24 // 32 = 0 channels
def test_impossible_configs_are_refused(bad):
    with pytest.raises(ValueError):
        HATEncoder(**{**TINY, **bad})


def test_runs_under_bf16_autocast():
    enc = _tiny()
    x = torch.rand(2, 3, 8, 12)
    with torch.no_grad():
        ref = enc(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = enc(x)
    assert out.shape == (2, 16, 8, 12) and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max().item() <= HAT_BF16_AUTOCAST_REL * ref.abs().max().item()
