"""The depth probe of the Spatial Forcing paper's analysis: a 2-layer MLP per input layer, then a DPT head.

DPT (Ranftl et al., "Vision Transformers for Dense Prediction") reassembles the token maps of four layers at four
scales (x4, x2, x1, x0.5 of the patch grid), fuses them coarse to fine with residual convolution units, and decodes a
dense map. The MLPs map the LLM-width visual tokens (4096 for OpenVLA-7B) to the head's token width, as the paper's
author describes. Everything is trained from scratch on frozen tokens; the output is log-depth (metres).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

NUM_DPT_LAYERS = 4
REASSEMBLE_FACTORS = (4, 2, 1, 0.5)  # finest (earliest layer) to coarsest (latest layer)


class TokenMLP(nn.Module):
    """Linear(d_in -> d), GELU, Linear(d -> d): LLM-width tokens to the DPT's token width."""

    def __init__(self, input_dim: int, output_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(input_dim, output_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(output_dim, output_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(tokens)))


def _resample(channels: int, factor: float) -> nn.Module:
    if factor > 1:
        return nn.ConvTranspose2d(channels, channels, kernel_size=int(factor), stride=int(factor))
    if factor < 1:
        return nn.Conv2d(channels, channels, kernel_size=3, stride=int(1 / factor), padding=1)
    return nn.Identity()


class ResidualConvUnit(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Adds the refined skip feature map to the coarser path, refines, upsamples x2, projects (1x1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.skip_unit = ResidualConvUnit(channels)
        self.unit = ResidualConvUnit(channels)
        self.out_conv = nn.Conv2d(channels, channels, 1)

    def forward(self, path: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            if path.shape[-2:] != skip.shape[-2:]:  # odd patch grids: x0.5 then x2 is one row/column off
                path = F.interpolate(path, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            path = path + self.skip_unit(skip)
        path = self.unit(path)
        path = F.interpolate(path, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(path)


class DPTDepthProbe(nn.Module):
    """Four layers' visual tokens of one camera -> log-depth map ``[B, 1, out, out]``.

    ``tokens`` is a list of four ``[B, h * w, d_in]`` tensors (earliest layer first) on an ``h x w`` patch grid.
    """

    def __init__(self, input_dim: int, token_dim: int = 256, features: int = 128):
        super().__init__()
        reassemble_channels = (features // 2, features, 2 * features, 2 * features)
        self.mlps = nn.ModuleList(TokenMLP(input_dim, token_dim) for _ in range(NUM_DPT_LAYERS))
        self.projections = nn.ModuleList(nn.Conv2d(token_dim, channels, 1) for channels in reassemble_channels)
        self.resamples = nn.ModuleList(
            _resample(channels, factor)
            for channels, factor in zip(reassemble_channels, REASSEMBLE_FACTORS, strict=True)
        )
        self.layer_convs = nn.ModuleList(
            nn.Conv2d(channels, features, 3, padding=1, bias=False) for channels in reassemble_channels
        )
        self.fusions = nn.ModuleList(FusionBlock(features) for _ in range(NUM_DPT_LAYERS))
        self.head = nn.Sequential(
            nn.Conv2d(features, max(features // 2, 1), 3, padding=1),
            nn.Conv2d(max(features // 2, 1), 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, 1),
        )

    def forward(self, tokens: list[Tensor], grid_hw: tuple[int, int], output_size: int) -> Tensor:
        if len(tokens) != NUM_DPT_LAYERS:
            raise ValueError(f"the DPT probe takes {NUM_DPT_LAYERS} layers of tokens; got {len(tokens)}")
        maps = []
        for index, layer_tokens in enumerate(tokens):
            hidden = self.mlps[index](layer_tokens)  # [B, h*w, token_dim]
            hidden = hidden.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[2], *grid_hw)  # [B, token_dim, h, w]
            hidden = self.resamples[index](self.projections[index](hidden))
            maps.append(self.layer_convs[index](hidden))  # [B, features, h * factor, w * factor]
        path = self.fusions[3](maps[3])  # coarsest: x0.5 -> x1
        for index in (2, 1, 0):
            path = self.fusions[index](path, maps[index])
        first, rest = self.head[0], self.head[1:]
        path = F.interpolate(first(path), size=(output_size, output_size), mode="bilinear", align_corners=True)
        return rest(path)  # [B, 1, out, out] log-depth
