"""EDSR-baseline encoder without its upsampler (official class ``EDSRNOUP``).

conv_first 3->64, 16 residual blocks (conv-ReLU-conv, no batch norm), conv_after_body.
Quirk kept on purpose: the released model returns ``conv_after_body(body(conv_first(x)))`` **without** the usual
long skip connection (the official forward computes the sum and discards it). No mean shift.
"""
from __future__ import annotations

import torch
from torch import nn

from .low_precision import ReLU, float_stream


class ResidualBlock(nn.Module):
    def __init__(self, num_feat: int):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.relu = ReLU()  # in place; fast in bf16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


class EDSREncoder(nn.Module):
    """(B, 3, H, W) -> (B, num_feat, H, W); any H, W (fully convolutional)."""

    window_size = 1  # no constraint on the input size

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, num_block: int = 16):
        super().__init__()
        self.out_channels = num_feat
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[ResidualBlock(num_feat) for _ in range(num_block)])
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_first(x)
        # Under autocast the convolutions return bf16/fp16, and the residual sums would round the stream to it after
        # every block: 16 roundings of a stream that grows block after block (no long skip) cost the whole model
        # ~6 dB on the conditioned golden weights. Kept in float32 the sums round once per block only in the
        # branch. No-op without autocast (the float32 or float64 model's own dtype is kept).
        return self.conv_after_body(self.body(float_stream(x)))


def infer_edsr_config(state_dict) -> dict:
    """Constructor kwargs from key names and shapes (feature width from conv_first, depth from body.N keys)."""
    if "conv_first.weight" not in state_dict or "body.0.conv1.weight" not in state_dict:
        raise ValueError("not an EDSR encoder: 'conv_first.weight' / 'body.0.conv1.weight' missing")
    first = state_dict["conv_first.weight"]
    num_block = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("body."))
    return {"num_in_ch": int(first.shape[1]), "num_feat": int(first.shape[0]), "num_block": num_block}
