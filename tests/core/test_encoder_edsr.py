"""EDSR-baseline encoder: shapes, config inference, the released quirk (no long skip), strict official loading."""
from __future__ import annotations

import pytest
import torch
from conftest import assert_encoder_shapes, load_golden

from gsasr.archs.encoder_edsr import EDSREncoder, infer_edsr_config

TINY = dict(num_in_ch=3, num_feat=16, num_block=2)


def _tiny() -> EDSREncoder:
    torch.manual_seed(0)
    return EDSREncoder(**TINY).eval()


def test_shape_any_size():
    enc = _tiny()
    assert enc.window_size == 1 and enc.out_channels == 16
    assert_encoder_shapes(enc, [(1, 3, 7, 5), (2, 3, 12, 9), (1, 3, 1, 1)])


def test_no_long_skip_connection():
    """[QUIRK] the released forward drops conv_first's output from the result: zeroing the body and the tail's
    weights (keeping its bias) must give exactly the tail's bias, not bias + conv_first(x)."""
    enc = _tiny()
    with torch.no_grad():
        for block in enc.body:
            block.conv2.weight.zero_()
            block.conv2.bias.zero_()
        enc.conv_after_body.weight.zero_()
        out = enc(torch.rand(1, 3, 5, 6))
    assert torch.equal(out, enc.conv_after_body.bias.view(1, -1, 1, 1).expand_as(out))


@pytest.mark.parametrize("config", [TINY, dict(num_in_ch=3, num_feat=8, num_block=5)])
def test_infer_config_round_trip(config):
    assert infer_edsr_config(EDSREncoder(**config).state_dict()) == config


def test_infer_config_refuses_other_encoders():
    with pytest.raises(ValueError, match="EDSR"):
        infer_edsr_config({"SFENet1.weight": torch.zeros(1)})


@pytest.mark.parametrize("arch", ["EDSR", "EDSR_DIV2K"])
def test_loads_the_official_layout_strictly(arch):
    enc_sd, _ = load_golden().state_dicts(arch)
    enc = EDSREncoder(**infer_edsr_config(enc_sd))
    enc.load_state_dict(enc_sd, strict=True)
    assert sum(p.numel() for p in enc.parameters()) == 1_220_416  # spec A.2
