"""RDN encoder: shapes, config inference, strict loading of the official checkpoint layout, forward semantics.

Parity of the full model with the official outputs is checked in test_golden_parity.py; here the encoder alone.
"""
from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_encoder_shapes, load_golden
from tolerances import ENCODER_REFERENCE_ABS

from gsasr.archs.encoder_edsr import EDSREncoder
from gsasr.archs.encoder_rdn import RDNEncoder, infer_rdn_config

TINY = dict(num_in_ch=3, num_feat=16, num_blocks=3, num_layers=2, growth=8, kernel_size=3)


def _tiny(seed: int = 0, **overrides) -> RDNEncoder:
    torch.manual_seed(seed)
    return RDNEncoder(**{**TINY, **overrides}).eval()


def test_shape_any_size():
    enc = _tiny()
    assert enc.window_size == 1 and enc.out_channels == 16
    assert_encoder_shapes(enc, [(1, 3, 7, 5), (2, 3, 12, 9), (1, 3, 1, 1)])


def _naive_forward(enc: RDNEncoder, x: torch.Tensor) -> torch.Tensor:
    """The official order of operations, written plainly with list + cat (no preallocation)."""
    def conv(layer, t):
        return F.conv2d(t, layer.weight, layer.bias, padding=layer.padding)

    shallow = conv(enc.SFENet1, x)  # img_range 1, no mean shift
    feat = conv(enc.SFENet2, shallow)
    outs = []
    for block in enc.RDBs:
        dense = feat
        for layer in block.convs:
            dense = torch.cat((dense, F.relu(conv(layer.conv[0], dense))), 1)
        feat = conv(block.LFF, dense) + feat
        outs.append(feat)
    return conv(enc.GFF[1], conv(enc.GFF[0], torch.cat(outs, 1))) + shallow  # long skip from SFENet1


def test_forward_matches_naive_statement():
    enc = _tiny(seed=1)
    x = torch.rand(2, 3, 9, 6)
    with torch.no_grad():
        err = (enc(x) - _naive_forward(enc, x)).abs().max().item()
    assert err <= ENCODER_REFERENCE_ABS


@pytest.mark.parametrize("overrides", [{}, dict(num_blocks=1, num_layers=4, growth=4), dict(num_feat=8, num_in_ch=1)])
def test_infer_config_round_trip(overrides):
    kwargs = {**TINY, **overrides}
    sd = _tiny(**overrides).state_dict()
    assert infer_rdn_config(sd) == kwargs
    RDNEncoder(**infer_rdn_config(sd)).load_state_dict(sd, strict=True)


def _constructor_defaults(cls) -> dict:
    return {name: p.default for name, p in inspect.signature(cls).parameters.items()}


@pytest.fixture(scope="module")
def golden_rdn_encoder():
    return load_golden().state_dicts("RDN")[0]


def test_golden_state_dict_loads_strictly(golden_rdn_encoder):
    sd = golden_rdn_encoder
    cfg = infer_rdn_config(sd)
    assert cfg == dict(num_in_ch=3, num_feat=64, num_blocks=16, num_layers=8, growth=64, kernel_size=3)
    assert cfg == _constructor_defaults(RDNEncoder)  # the defaults are the released configuration
    enc = RDNEncoder(**cfg)
    enc.load_state_dict(sd, strict=True)
    assert sum(p.numel() for p in enc.parameters()) == 21_973_952  # spec A.2


def test_enhanced_release_has_the_same_encoder():
    """RDN_DIV2K/_DF2K share the paper RDN's encoder keys and shapes, so the strict-load test covers them too."""
    rows = {arch: [r for r in load_golden().manifest(arch) if r[0] == "encoder"] for arch in ("RDN", "RDN_DIV2K")}
    assert rows["RDN_DIV2K"] == rows["RDN"]


@pytest.mark.parametrize("foreign", ["edsr", "empty"])
def test_foreign_state_dict_is_refused(foreign):
    sd = EDSREncoder(num_feat=8, num_block=1).state_dict() if foreign == "edsr" else {}
    with pytest.raises(ValueError, match="SFENet1.weight"):
        infer_rdn_config(sd)


def test_runs_under_bf16_autocast():
    enc = _tiny()
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(x)
    assert out.shape == (1, 16, 6, 5) and torch.isfinite(out).all()
