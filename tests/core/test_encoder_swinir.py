"""SwinIR encoder: shapes, shifted-window masks at any size, config inference, strict loading of the official layout.

Parity of the full model with the official outputs is checked in test_golden_parity.py; here the encoder alone.
"""
from __future__ import annotations

import inspect

import pytest
import torch
from conftest import assert_encoder_shapes, load_golden
from tolerances import ENCODER_REFERENCE_ABS

from gsasr.archs import encoder_swinir
from gsasr.archs.blocks import window_partition, window_reverse
from gsasr.archs.encoder_edsr import EDSREncoder
from gsasr.archs.encoder_rdn import RDNEncoder
from gsasr.archs.encoder_swinir import (
    SwinBlock,
    SwinIREncoder,
    assemble_shift_mask,
    infer_swinir_config,
    shift_mask_patterns,
)
from gsasr.errors import InvalidInputError

TINY = dict(num_in_ch=3, embed_dim=12, depths=(2, 3), num_heads=(2, 3), window_size=4, mlp_ratio=2.0, img_size=8,
            num_feat=16)


def _tiny(seed: int = 0, **overrides) -> SwinIREncoder:
    torch.manual_seed(seed)
    return SwinIREncoder(**{**TINY, **overrides}).eval()


def test_shape_at_multiples_of_the_window():
    enc = _tiny()
    assert enc.window_size == 4 and enc.out_channels == 16
    assert_encoder_shapes(enc, [(1, 3, 4, 4), (2, 3, 8, 12), (1, 3, 16, 4)])


def test_size_not_a_multiple_of_the_window_is_refused():
    with pytest.raises(InvalidInputError, match="multiple of 4"):
        _tiny()(torch.rand(1, 3, 8, 6))


def _official_style_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """(nW, N, N) shift mask the way the official code states it: label 3 x 3 image regions, compare labels."""
    labels = torch.zeros(1, h, w, 1)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, rows in enumerate(bands):
        for j, cols in enumerate(bands):
            labels[:, rows, cols, :] = 3 * i + j
    win = window_partition(labels, window).squeeze(-1)  # (nW, N)
    diff = win[:, None, :] - win[:, :, None]
    return torch.where(diff != 0, -100.0, 0.0)


@pytest.mark.parametrize("windows_hw", [(1, 1), (1, 3), (4, 1), (3, 5), (6, 6)])
@pytest.mark.parametrize("window, shift", [(4, 2), (8, 4)])
def test_shift_mask_matches_the_official_construction(windows_hw, window, shift):
    nh, nw = windows_hw
    ours = assemble_shift_mask(shift_mask_patterns(window, shift), nh, nw)
    assert torch.equal(ours, _official_style_mask(nh * window, nw * window, window, shift))


def _naive_block(block: SwinBlock, x: torch.Tensor) -> torch.Tensor:
    """One Swin block with the whole per-size mask and an explicit softmax, as the official code computes it."""
    b, h, w, c = x.shape
    ws, s, attn = block.window_size, block.shift, block.attn
    heads, n = attn.num_heads, ws * ws
    y = block.norm1(x)
    if s:
        y = torch.roll(y, (-s, -s), (1, 2))
    win = window_partition(y, ws)  # (B*nW, N, C)
    q, k, v = attn.qkv(win).reshape(-1, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    scores = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1) + attn.position_bias()[None]
    if s:
        mask = _official_style_mask(h, w, ws, s)
        scores = (scores.view(b, -1, heads, n, n) + mask[None, :, None]).view(-1, heads, n, n)
    out = attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c))
    y = window_reverse(out, ws, h, w)
    if s:
        y = torch.roll(y, (s, s), (1, 2))
    x = x + y
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("hw", [(4, 4), (8, 12), (12, 4), (16, 16)])
@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("windows_per_call", [None, 3])
def test_block_matches_naive_statement(hw, shift, windows_per_call, monkeypatch):
    if windows_per_call:  # exercise the chunking that keeps CUDA's SDPA grid within its limit
        monkeypatch.setattr(encoder_swinir, "_MAX_WINDOWS_PER_CALL", windows_per_call)
    torch.manual_seed(3)
    block = SwinBlock(dim=12, num_heads=3, window_size=4, shift=shift, mlp_ratio=2.0, img_size=8).eval()
    with torch.no_grad():  # make the relative-position bias matter as much as in a trained model
        block.attn.relative_position_bias_table.normal_()
        x = torch.randn(2, *hw, 12)
        err = (block(x) - _naive_block(block, x)).abs().max().item()
    assert err <= ENCODER_REFERENCE_ABS


@pytest.mark.parametrize("overrides", [{}, dict(depths=(1,), num_heads=(4,), mlp_ratio=1.5),
                                       dict(embed_dim=18, window_size=2, img_size=6, num_feat=8)])
def test_infer_config_round_trip(overrides):
    kwargs = {**TINY, **overrides}
    sd = _tiny(**overrides).state_dict()
    cfg = infer_swinir_config(sd)
    if not any(key.endswith("attn_mask") for key in sd):  # no shifted block: img_size unknowable, release value
        kwargs["img_size"] = 48
    assert cfg == kwargs
    SwinIREncoder(**cfg).load_state_dict(sd, strict=True)


@pytest.fixture(scope="module")
def golden_swin_encoder():
    return load_golden().state_dicts("SWIN")[0]


def test_golden_state_dict_loads_strictly(golden_swin_encoder):
    sd = golden_swin_encoder
    cfg = infer_swinir_config(sd)
    assert cfg == dict(num_in_ch=3, embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6, window_size=8,
                       mlp_ratio=2.0, img_size=48, num_feat=64)
    assert cfg == {name: p.default for name, p in inspect.signature(SwinIREncoder).parameters.items()}  # release
    enc = SwinIREncoder(**cfg)
    fresh = {k: v.clone() for k, v in enc.state_dict().items()}
    # Our constructor rebuilds the official buffers exactly (48x48 attn_mask, relative_position_index).
    for key, value in sd.items():
        if key.endswith(("attn_mask", "relative_position_index")):
            assert torch.equal(fresh[key], value), key
    enc.load_state_dict(sd, strict=True)
    assert sum(p.numel() for p in enc.parameters()) == 11_603_044  # spec A.2


def test_enhanced_release_has_the_same_encoder():
    """SWIN_DIV2K/_DF2K share the paper SWIN's encoder keys and shapes, so the strict-load test covers them too."""
    rows = {arch: [r for r in load_golden().manifest(arch) if r[0] == "encoder"] for arch in ("SWIN", "SWIN_DIV2K")}
    assert rows["SWIN_DIV2K"] == rows["SWIN"]


@pytest.mark.parametrize("foreign", ["edsr", "rdn", "empty"])
def test_foreign_state_dict_is_refused(foreign):
    sd = {"edsr": lambda: EDSREncoder(num_feat=8, num_block=1).state_dict(),
          "rdn": lambda: RDNEncoder(num_feat=8, num_blocks=1, num_layers=1, growth=4).state_dict(),
          "empty": dict}[foreign]()
    with pytest.raises(ValueError, match="key '.*' is missing"):
        infer_swinir_config(sd)


def test_runs_under_bf16_autocast():
    enc = _tiny()
    x = torch.rand(2, 3, 8, 12)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(x)
    assert out.shape == (2, 16, 8, 12) and torch.isfinite(out).all()
