"""The reference model: a small encoder-processor-decoder weather model on a fixed lat/lon grid.

It uses anemoi-models' module names, so patterns written for AIFS (LoRA targets, freeze globs,
translations) work on it unchanged::

    grid_features                                  [grid, 4] buffer: sin/cos lat, sin/cos lon
    encoder.{weight,bias}                          Linear(n_vars + 4 -> channels)
    processor.proc.<i>.layer_norm_attention        LayerNorm(channels)
    processor.proc.<i>.attention.lin_{q,k,v}       Linear(channels -> channels), no bias (as anemoi)
    processor.proc.<i>.attention.projection        Linear(channels -> channels)
    processor.proc.<i>.layer_norm_mlp              LayerNorm(channels)
    processor.proc.<i>.mlp.mlp.{0,2}               Linear, GELU between, hidden = mlp_ratio * channels
    decoder.{weight,bias}                          Linear(channels -> n_vars)

``forward(x[batch, grid, n_vars]) -> x + decoder(...)``: a residual (tendency) prediction of the
next state. ``grid_features`` is a *persistent* buffer: the file then records the grid the weights
were trained on, and strict loading into a model on another grid fails on its shape instead of
silently running with wrong positions. It never changes, so freeze deltas never hold it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.utils.checkpoint import checkpoint

Size = Literal["tiny", "small", "medium", "aifs-like"]

#: Presets. aifs-like has AIFS's processor width and depth (1024 channels, 16 layers, 16 heads,
#: ~200M parameters) on a small grid, so a training step fits in memory on one machine.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(channels=16, layers=2, heads=2, n_lat=8, n_lon=16, n_vars=4, mlp_ratio=4),
    "small": dict(channels=64, layers=4, heads=4, n_lat=16, n_lon=32, n_vars=8, mlp_ratio=4),
    "medium": dict(channels=256, layers=8, heads=8, n_lat=24, n_lon=48, n_vars=8, mlp_ratio=4),
    "aifs-like": dict(channels=1024, layers=16, heads=16, n_lat=16, n_lon=32, n_vars=8, mlp_ratio=4),
}


class ReferenceConfig(BaseModel):
    """A preset ``size`` with optional overrides; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")

    size: Size = "tiny"
    channels: int | None = Field(default=None, ge=1)
    layers: int | None = Field(default=None, ge=0)
    heads: int | None = Field(default=None, ge=1)
    n_lat: int | None = Field(default=None, ge=1)
    n_lon: int | None = Field(default=None, ge=1)
    n_vars: int | None = Field(default=None, ge=1)
    mlp_ratio: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _heads_divide_channels(self) -> "ReferenceConfig":
        r = self.resolved()
        if r["channels"] % r["heads"]:
            raise ValueError(f"channels ({r['channels']}) must be a multiple of heads ({r['heads']})")
        return self

    def resolved(self) -> dict[str, Any]:
        """Every field filled in: what a saved file records (immune to later preset changes)."""
        out: dict[str, Any] = {"size": self.size, **PRESETS[self.size]}
        out.update({k: v for k, v in self.model_dump(exclude={"size"}).items() if v is not None})
        return out


def latlon_grid(n_lat: int, n_lon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latitudes and longitudes (radians, float64) of the grid points, flattened row-major
    (index = i_lat * n_lon + i_lon). Latitudes are cell centres, so no point sits on a pole."""
    lat = (torch.arange(n_lat, dtype=torch.float64) + 0.5) * (math.pi / n_lat) - math.pi / 2
    lon = torch.arange(n_lon, dtype=torch.float64) * (2 * math.pi / n_lon)
    return lat.repeat_interleave(n_lon), lon.repeat(n_lat)


def count_parameters(config: dict[str, Any] | ReferenceConfig) -> int:
    """The number of parameters a config builds, by arithmetic (no allocation): for the big presets."""
    c = config if isinstance(config, ReferenceConfig) else ReferenceConfig.model_validate(config)
    r = c.resolved()
    ch, v, hid = r["channels"], r["n_vars"], r["channels"] * r["mlp_ratio"]
    block = (3 * ch * ch) + (ch * ch + ch) + 2 * (2 * ch) + (hid * ch + hid) + (ch * hid + ch)
    return (v + 4) * ch + ch + r["layers"] * block + ch * v + v


class MultiHeadSelfAttention(nn.Module):
    """Self-attention over all grid points (anemoi's names: lin_q/lin_k/lin_v/projection)."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.lin_q = nn.Linear(channels, channels, bias=False)
        self.lin_k = nn.Linear(channels, channels, bias=False)
        self.lin_v = nn.Linear(channels, channels, bias=False)
        self.projection = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (lin(x).view(b, n, self.heads, c // self.heads).transpose(1, 2)
                   for lin in (self.lin_q, self.lin_k, self.lin_v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.projection(out.transpose(1, 2).reshape(b, n, c))


class MLP(nn.Module):
    """``mlp.mlp.0`` / ``mlp.mlp.2``: the extra level of nesting is anemoi's."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block, as anemoi's TransformerProcessorBlock."""

    def __init__(self, channels: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.layer_norm_attention = nn.LayerNorm(channels)
        self.attention = MultiHeadSelfAttention(channels, heads)
        self.layer_norm_mlp = nn.LayerNorm(channels)
        self.mlp = MLP(channels, mlp_ratio * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layer_norm_attention(x))
        return x + self.mlp(self.layer_norm_mlp(x))


class Processor(nn.Module):
    def __init__(self, channels: int, layers: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.proc = nn.ModuleList(TransformerBlock(channels, heads, mlp_ratio) for _ in range(layers))
        #: recompute each block in the backward pass instead of keeping its activations (the
        #: trainer's ``activation_checkpointing``); a flag, not a wrapper, so no name changes
        self.activation_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.proc:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return x


class ReferenceModel(nn.Module):
    """Encoder-processor-decoder on a fixed grid; predicts ``x_{t+1} = x_t + f(x_t)``."""

    def __init__(self, config: ReferenceConfig | dict[str, Any] | None = None) -> None:
        super().__init__()
        cfg = config if isinstance(config, ReferenceConfig) else ReferenceConfig.model_validate(config or {})
        r = cfg.resolved()
        self.reference_config = r  # not `config`: PEFT reads a `config` attribute as a HF config
        self.n_lat, self.n_lon, self.n_vars = r["n_lat"], r["n_lon"], r["n_vars"]
        self.grid_size = self.n_lat * self.n_lon
        lat, lon = latlon_grid(self.n_lat, self.n_lon)
        feats = torch.stack([lat.sin(), lat.cos(), lon.sin(), lon.cos()], dim=-1).float()
        self.register_buffer("grid_features", feats, persistent=True)
        self.encoder = nn.Linear(self.n_vars + 4, r["channels"])
        self.processor = Processor(r["channels"], r["layers"], r["heads"], r["mlp_ratio"])
        self.decoder = nn.Linear(r["channels"], self.n_vars)
        # What builders.model_spec returns, and what a saved file's metadata.model records.
        self.anemoi_ckpt_spec = {"builder": "reference", "config": dict(r)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != self.grid_size or x.shape[2] != self.n_vars:
            raise ValueError(f"expected input [batch, {self.grid_size}, {self.n_vars}] "
                             f"(grid {self.n_lat}x{self.n_lon}), got {list(x.shape)}")
        pos = self.grid_features.to(x.dtype).expand(x.shape[0], -1, -1)
        h = self.encoder(torch.cat([x, pos], dim=-1))
        h = self.processor(h)
        return x + self.decoder(h)


def build_reference(config: dict[str, Any]) -> ReferenceModel:
    """The ``reference`` builder: validates ``config`` (pydantic, extra keys forbidden) and builds."""
    return ReferenceModel(ReferenceConfig.model_validate(config))
