"""A synthetic, weather-like dataset on the reference model's lat/lon grid (no download, no files).

Each sample is a pair of consecutive states ``(x_t, x_{t+1})``, float32 ``[grid, n_vars]``, grid
flattened row-major as in :func:`anemoi_ckpt.models.reference.latlon_grid`. A state is a sum of a few
smooth waves (``cos(lat) * cos(m*lon + phi) * cos(n*lat + psi)``, spherical-harmonic-like), with
random wavenumbers and phases per sample, that evolve by advection (a fixed wind shifts the phases
each step) plus a diurnal-like forcing (a wave following the sun around the globe). The ``regional``
variant has other dynamics - another wind speed and direction, a meridional drift, and an
oscillation localised in one region - so a model pretrained on ``global`` has something to learn.

Deterministic: item ``i`` depends only on ``(seed, i)`` (not on ``n_samples`` or access order), and
the normalisation constants only on the variant and the grid, so different seeds share a scale.
Only torch is needed (no Lightning), so the dataset also serves benchmarks and tests.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from anemoi_ckpt.models.reference import latlon_grid

Variant = Literal["global", "regional"]

WAVES = 4                       # waves per variable and sample
DIURNAL_PERIOD = 8.0            # steps for the forcing wave to go once round the globe
NORM_SAMPLES = 64               # reference samples the normalisation is estimated from
BLOCK = 64                      # samples generated together (and cached) in one vectorised call
MAX_BLOCKS = 64                 # cached blocks per dataset (about 4096 samples)
#: Per-variant dynamics. Winds are in radians per step; ``v`` drifts the latitude pattern.
DYNAMICS: dict[str, dict[str, float]] = {
    "global": dict(u=0.15, v=0.0, forcing=0.5, blob=0.0, blob_period=3.0),
    "regional": dict(u=-0.10, v=0.06, forcing=0.5, blob=1.5, blob_period=3.0),
}
#: Centre (radians) and width of the regional oscillation: a patch over 40N, 90E.
BLOB_LAT, BLOB_LON, BLOB_WIDTH = math.radians(40.0), math.radians(90.0), math.radians(25.0)


class SyntheticWeather(Dataset):
    """``n_samples`` pairs ``(x_t, x_{t+1})`` of a synthetic atmosphere, normalised to ~unit variance."""

    def __init__(self, n_samples: int = 256, *, seed: int = 0, n_lat: int = 8, n_lon: int = 16,
                 n_vars: int = 4, variant: Variant = "global") -> None:
        if variant not in DYNAMICS:
            raise ValueError(f"variant must be one of {', '.join(DYNAMICS)}, not {variant!r}")
        for name, value in (("n_samples", n_samples), ("n_lat", n_lat), ("n_lon", n_lon), ("n_vars", n_vars)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        self.n_samples, self.seed, self.variant = n_samples, int(seed), variant
        self.n_lat, self.n_lon, self.n_vars = n_lat, n_lon, n_vars
        self.grid_size = n_lat * n_lon
        self._mean, self._std = _norm_stats(variant, n_lat, n_lon, n_vars)
        self._blocks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def for_model(cls, model_config: dict[str, Any], **kwargs: Any) -> "SyntheticWeather":
        """A dataset on the grid and variables of a reference model config (resolved or not)."""
        from anemoi_ckpt.models.reference import ReferenceConfig

        r = ReferenceConfig.model_validate(model_config).resolved()
        return cls(n_lat=r["n_lat"], n_lon=r["n_lon"], n_vars=r["n_vars"], **kwargs)

    def __len__(self) -> int:
        return self.n_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self.n_samples <= index < self.n_samples:
            raise IndexError(f"index {index} out of range for {self.n_samples} samples")
        index %= self.n_samples
        block = index // BLOCK
        if block not in self._blocks:
            if len(self._blocks) >= MAX_BLOCKS:  # bounded memory for long datasets
                self._blocks.pop(next(iter(self._blocks)))
            rng = range(block * BLOCK, min((block + 1) * BLOCK, self.n_samples))
            x0, x1 = _pairs(self.variant, self.n_lat, self.n_lon, self.n_vars, self.seed, rng)
            self._blocks[block] = (((x0 - self._mean) / self._std).float(),
                                   ((x1 - self._mean) / self._std).float())
        x0, x1 = self._blocks[block]
        # Clones: a caller may modify its sample in place without changing the cached block.
        return x0[index % BLOCK].clone(), x1[index % BLOCK].clone()

    def describe(self) -> dict[str, Any]:
        """What lineage records about the data a model was trained on."""
        return {"name": "synthetic-weather", "version": 1, "variant": self.variant,
                "grid": [self.n_lat, self.n_lon], "n_vars": self.n_vars,
                "n_samples": self.n_samples, "seed": self.seed}


def _params(seed: int, index: int, n_vars: int) -> tuple[torch.Tensor, ...]:
    """The random draws of sample ``index``: wavenumbers, phases, start time."""
    # One generator per item: item i is the same whatever n_samples is and in whatever order it is
    # read (DataLoader workers, a resumed run, a DDP rank's subset).
    g = torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63 - 1))
    m = torch.randint(1, 4, (n_vars, WAVES), generator=g).double()      # zonal wavenumbers
    n = torch.randint(0, 3, (n_vars, WAVES), generator=g).double()      # meridional wavenumbers
    phases = torch.rand(2, n_vars, WAVES, generator=g, dtype=torch.float64) * 2 * math.pi
    t0 = torch.rand((), generator=g, dtype=torch.float64) * 24.0
    return m, n, phases[0], phases[1], t0


def _pairs(variant: str, n_lat: int, n_lon: int, n_vars: int, seed: int,
           indices: range) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw (unnormalised, float64) states ``[len(indices), grid, n_vars]`` at t0 and t0 + 1, computed
    for a block of samples at once (per-item small tensor ops would dominate a training step)."""
    m, n, phi, psi, t0 = (torch.stack(x) for x in zip(*(_params(seed, i, n_vars) for i in indices)))
    return tuple(_state(variant, n_lat, n_lon, m, n, phi, psi, t) for t in (t0, t0 + 1.0))  # type: ignore


def _state(variant: str, n_lat: int, n_lon: int, m: torch.Tensor, n: torch.Tensor,
           phi: torch.Tensor, psi: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """States ``[B, G, V]`` for waves ``m, n, phi, psi`` ``[B, V, K]`` at times ``t`` ``[B]``."""
    d = DYNAMICS[variant]
    n_vars = m.shape[1]
    b = t.shape[0]
    lat, lon = latlon_grid(n_lat, n_lon)                                        # [G] each
    lat_axis, lon_axis = lat[::n_lon], lon[:n_lon]
    t4 = t[:, None, None, None]                                                 # [B, 1, 1, 1]
    # Each variable is advected a little faster than the previous one (levels of a sheared wind).
    speed = d["u"] * (1.0 + 0.2 * torch.arange(n_vars, dtype=torch.float64))[None, None, :, None]
    # The waves are separable in lat and lon: evaluate each factor on its axis only, then combine
    # with one einsum (evaluating cos on every grid point is ~10x slower).
    zonal = torch.cos(m[:, None] * (lon_axis[None, :, None, None] - speed * t4) + phi[:, None])
    merid = torch.cos(n[:, None] * (lat_axis[None, :, None, None] - d["v"] * t4) + psi[:, None])
    merid = merid * (1.0 / (m + n))[:, None] * torch.cos(lat_axis)[None, :, None, None]
    x = torch.einsum("bavk,bovk->baov", merid, zonal).reshape(b, n_lat * n_lon, n_vars)  # [B, G, V]
    # Diurnal-like forcing: a heating wave following the sun, strongest at the equator.
    t3 = t[:, None, None]                                                       # [B, 1, 1]
    phase = 0.5 * torch.arange(n_vars, dtype=torch.float64)
    sun = 2 * math.pi * t3 / DIURNAL_PERIOD
    x = x + d["forcing"] * (torch.cos(lat) ** 2)[None, :, None] * torch.sin(lon[None, :, None] + sun + phase)
    if d["blob"]:
        # A localised oscillation (a regional weather regime the global model never saw).
        dlon = torch.remainder(lon - BLOB_LON + math.pi, 2 * math.pi) - math.pi
        dist2 = (lat - BLOB_LAT) ** 2 + (dlon * torch.cos(lat)) ** 2
        bump = torch.exp(-dist2 / (2 * BLOB_WIDTH**2))[None, :, None]
        x = x + d["blob"] * bump * torch.sin(2 * math.pi * t3 / d["blob_period"] + phase)
    return x


@lru_cache(maxsize=32)
def _norm_stats(variant: str, n_lat: int, n_lon: int, n_vars: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-variable mean and std over fixed reference samples (seed-independent, so every seed of a
    variant shares one scale, as a real dataset's statistics would)."""
    flat = _pairs(variant, n_lat, n_lon, n_vars, -1, range(NORM_SAMPLES))[0].reshape(-1, n_vars)
    return flat.mean(0), flat.std(0).clamp_min(1e-6)
