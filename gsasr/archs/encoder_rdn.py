"""RDN encoder without its upsampler (official class ``RDNNOUP``, configuration 'B').

Shallow features: SFENet1 (3->64) and SFENet2 (64->64), both 3x3. Then 16 residual dense blocks (RDB). Inside an
RDB, each of 8 layers is conv3x3 + ReLU whose 64 new channels are concatenated onto everything before it (the
input of layer c has 64 + 64c channels); a 1x1 "local feature fusion" (LFF) maps the 576 channels back to 64 and
the block input is added. Global feature fusion (GFF) = 1x1 conv over the 16 block outputs concatenated
(1024 -> 64), then a 3x3 conv; the SFENet1 output is added as the long skip.

Quirks of the release kept here: no upsampler (the decoder consumes the 64-channel LR features), and
``img_range`` = 1 with no mean shift, so the input in [0, 1] goes straight into SFENet1.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError


class DenseLayer(nn.Module):
    """conv3x3 + ReLU; the new channels are appended to the input (dense connectivity).

    The conv sits in a Sequential named ``conv`` because the checkpoint keys are ``...convs.<c>.conv.0.*``.
    """

    def __init__(self, in_channels: int, growth: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, growth, kernel_size, 1, (kernel_size - 1) // 2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.conv(x)), dim=1)


class ResidualDenseBlock(nn.Module):
    """``num_layers`` dense layers, then a 1x1 local feature fusion back to ``num_feat`` channels, plus the input."""

    def __init__(self, num_feat: int, growth: int, num_layers: int, kernel_size: int = 3):
        super().__init__()
        self.convs = nn.Sequential(*[DenseLayer(num_feat + c * growth, growth, kernel_size)
                                     for c in range(num_layers)])
        self.LFF = nn.Conv2d(num_feat + num_layers * growth, num_feat, 1)  # checkpoint name, hence upper case

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LFF(self.convs(x)) + x


class RDNEncoder(nn.Module):
    """(B, 3, H, W) in [0, 1] -> (B, num_feat, H, W); any H, W (fully convolutional).

    Defaults are the released configuration ('B': G0 = 64, D = 16 blocks, C = 8 layers, G = 64, 3x3 kernels).
    """

    window_size = 1  # no constraint on the input size

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, num_blocks: int = 16, num_layers: int = 8,
                 growth: int = 64, kernel_size: int = 3):
        super().__init__()
        if num_blocks < 1 or num_layers < 1:
            raise ValueError(f"RDN needs at least one block and one layer per block, got {num_blocks}, {num_layers}")
        self.out_channels = num_feat
        pad = (kernel_size - 1) // 2
        self.SFENet1 = nn.Conv2d(num_in_ch, num_feat, kernel_size, 1, pad)
        self.SFENet2 = nn.Conv2d(num_feat, num_feat, kernel_size, 1, pad)
        self.RDBs = nn.ModuleList([ResidualDenseBlock(num_feat, growth, num_layers, kernel_size)
                                   for _ in range(num_blocks)])
        self.GFF = nn.Sequential(nn.Conv2d(num_blocks * num_feat, num_feat, 1),
                                 nn.Conv2d(num_feat, num_feat, kernel_size, 1, pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # img_range is 1 in the release and there is no mean shift: nothing to do to the input.
        shallow = self.SFENet1(x)
        feat = self.SFENet2(shallow)
        # GFF reads all block outputs concatenated. Writing each output straight into its channel slice of one
        # preallocated tensor gives the same values as a list + torch.cat but holds the 16*64 channels once, not
        # twice, at the peak.
        c = feat.shape[1]
        stacked = feat.new_empty(feat.shape[0], len(self.RDBs) * c, *feat.shape[2:])
        for i, block in enumerate(self.RDBs):
            feat = block(feat)
            stacked[:, i * c:(i + 1) * c] = feat
        fused = self.GFF(stacked)
        return fused + shallow  # long skip from SFENet1 (not SFENet2)


_RDB_KEY = re.compile(r"^RDBs\.(\d+)\.LFF\.weight$")
_LAYER_KEY = re.compile(r"^RDBs\.0\.convs\.(\d+)\.conv\.0\.weight$")


def infer_rdn_config(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor kwargs of :class:`RDNEncoder` from key names and tensor shapes of an official RDNNOUP state dict.

    Everything the constructor takes is visible in the weights. Not inferable and fixed by the architecture:
    the ReLU activation, and ``img_range`` (1 in every release, i.e. no input scaling and no mean shift).
    Raises :class:`CheckpointError` (a ValueError) naming the first missing key if this is not an RDN encoder.
    """
    for key in ("SFENet1.weight", "SFENet2.weight", "RDBs.0.LFF.weight", "RDBs.0.convs.0.conv.0.weight",
                "GFF.0.weight", "GFF.1.weight"):
        if key not in state_dict:
            raise CheckpointError(f"not an RDN encoder state dict: key '{key}' is missing")
    sfe1 = state_dict["SFENet1.weight"]  # (G0, n_colors, k, k)
    num_blocks = 1 + max(int(m.group(1)) for k in state_dict if (m := _RDB_KEY.match(k)))
    num_layers = 1 + max(int(m.group(1)) for k in state_dict if (m := _LAYER_KEY.match(k)))
    return {
        "num_in_ch": int(sfe1.shape[1]),
        "num_feat": int(sfe1.shape[0]),
        "num_blocks": num_blocks,
        "num_layers": num_layers,
        "growth": int(state_dict["RDBs.0.convs.0.conv.0.weight"].shape[0]),
        "kernel_size": int(sfe1.shape[-1]),
    }
