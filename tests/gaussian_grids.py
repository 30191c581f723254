"""Raw Gaussians laid out like the decoder's output, shared by the rasteriser and tiling tests."""
from __future__ import annotations

import torch


def grid_gaussians(hp: int, wp: int, seed: int, *, offset: float = 1.0, extremes: bool = True) -> torch.Tensor:
    """[16 hp wp, 9] raw parameters laid out like the decoder's: a row-major 4hp x 4wp grid, each mean at its
    cell centre plus a random offset (``offset`` cells std), with rho near +-1, tiny and wide sigmas."""
    gen = torch.Generator().manual_seed(seed)
    gh, gw = 4 * hp, 4 * wp
    raw = torch.randn(gh * gw, 9, generator=gen)
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    raw[:, 7] = ((xs.reshape(-1) + 0.5) + offset * torch.randn(gh * gw, generator=gen)) / gw
    raw[:, 8] = ((ys.reshape(-1) + 0.5) + offset * torch.randn(gh * gw, generator=gen)) / gh
    if extremes and raw.shape[0] >= 8:
        raw[0, 2], raw[1, 2] = 9.0, -9.0  # rho = +-0.999999
        raw[2, 0:2] = -14.0  # sigma ~ 1e-6
        raw[3, 0:2] = 12.0  # sigma ~ 1
        raw[4, 0], raw[4, 1] = -14.0, 12.0  # a line
        raw[5, 7:9] = torch.tensor([1.4, -0.3])  # centre outside the canvas
        raw[6, 7:9] = torch.tensor([5.0, -4.0])  # far outside
    return raw
