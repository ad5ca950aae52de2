"""Low-rank factorisation of a weight delta, ``delta ~= B @ A`` (pure torch, fp32, no I/O).

The singular values are split evenly between the factors (``A = sqrt(S) Vh``, ``B = U sqrt(S)``,
as mergekit does) so neither factor carries the whole scale: their magnitudes stay comparable,
which keeps later fp16/bf16 casts and LoRA fine-tuning from this initialisation well conditioned.

Errors are exact where they can be: with a full SVD the relative Frobenius error is
``sqrt(sum of discarded S^2) / ||delta||``; a randomized factorisation has no discarded singular
values, so its error is the residual itself, computed once.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

#: Power iterations and oversampling of the randomized range finder (Halko, Martinsson and
#: Tropp 2011, algorithms 4.3/5.1): two iterations are enough for the slowly decaying spectra of
#: fine-tuning deltas; ten extra columns make the captured range almost surely contain the top-k.
POWER_ITERATIONS = 2
OVERSAMPLING = 10


class Factors(NamedTuple):
    A: torch.Tensor  # (rank, in)
    B: torch.Tensor  # (out, rank)
    rank: int
    retained_energy: float  # sum kept S^2 / ||delta||_F^2
    rel_error: float  # ||delta - B @ A||_F / ||delta||_F


def numerical_rank(s: torch.Tensor, shape: tuple[int, int]) -> int:
    """Singular values above fp32 round-off of the largest (numpy's matrix_rank tolerance):
    anything below is noise of the subtraction, not a direction worth storing."""
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 0
    tol = float(s[0]) * max(shape) * torch.finfo(torch.float32).eps
    return int((s > tol).sum())


def choose_rank(s: torch.Tensor, total_energy: float, shape: tuple[int, int], *,
                rank: int | None = None, energy: float | None = None) -> int:
    """Rank to keep: ``rank`` (capped at the numerical rank) or the smallest rank whose retained
    energy reaches ``energy``."""
    avail = numerical_rank(s, shape)
    if rank is not None:
        return min(rank, avail)
    assert energy is not None
    if total_energy == 0.0:
        return 0
    # float64 cumulative sums: a threshold like 0.999 must not be missed by fp32 round-off
    cum = torch.cumsum(s[:avail].double() ** 2, 0) / total_energy
    hit = torch.nonzero(cum >= energy - 1e-12)
    return int(hit[0]) + 1 if hit.numel() else avail


def randomized_svd(m: torch.Tensor, k: int, *, seed: int = 0, oversampling: int = OVERSAMPLING,
                   power_iterations: int = POWER_ITERATIONS
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Approximate top-``k`` SVD of ``m`` (Halko et al.): Gaussian sketch, power iterations with
    QR re-orthonormalisation (keeps small singular values from drowning in round-off), then an
    exact SVD of the small projected matrix. Seeded with a private generator: reproducible and
    leaves the global RNG alone."""
    out_f, in_f = m.shape
    p = min(k + oversampling, out_f, in_f)
    gen = torch.Generator(device=m.device).manual_seed(seed)
    omega = torch.randn(in_f, p, generator=gen, dtype=m.dtype, device=m.device)
    q, _ = torch.linalg.qr(m @ omega)
    for _ in range(power_iterations):
        z, _ = torch.linalg.qr(m.T @ q)
        q, _ = torch.linalg.qr(m @ z)
    ub, s, vh = torch.linalg.svd(q.T @ m, full_matrices=False)
    return q @ ub, s, vh


def factorise(delta: torch.Tensor, rank: int | None = None, energy: float | None = None,
              randomized: bool = False, seed: int = 0) -> Factors:
    """``delta ~= B @ A`` with ``A`` (r, in) and ``B`` (out, r), both fp32.

    Give exactly one of ``rank`` (at most that many; fewer if ``delta``'s numerical rank is
    lower) or ``energy`` in (0, 1] (smallest rank retaining that fraction of sum S^2).
    ``randomized`` needs ``rank``: an energy threshold needs the whole spectrum."""
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank or energy")
    if rank is not None and rank < 1:
        raise ValueError(f"rank must be at least 1, not {rank}")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], not {energy}")
    if randomized and rank is None:
        raise ValueError("randomized SVD needs a rank, not an energy threshold")
    if delta.ndim != 2:
        raise ValueError(f"delta must be 2-D, not {delta.ndim}-D")
    m = delta.detach().to(torch.float32)
    shape = (m.shape[0], m.shape[1])
    total = float(torch.linalg.vector_norm(m, dtype=torch.float64) ** 2)
    if total == 0.0:
        return Factors(m.new_zeros(0, shape[1]), m.new_zeros(shape[0], 0), 0, 1.0, 0.0)
    # A sketch no smaller than the matrix saves nothing and loses exactness: full SVD then.
    use_random = randomized and rank is not None and rank + OVERSAMPLING < min(shape)
    if use_random:
        u, s, vh = randomized_svd(m, rank, seed=seed)
    else:
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
    k = choose_rank(s, total, shape, rank=rank, energy=energy)
    root = s[:k].sqrt()
    a = (root[:, None] * vh[:k]).contiguous()
    b = (u[:, :k] * root[None, :]).contiguous()
    kept = float((s[:k].double() ** 2).sum())
    if use_random:
        residual = float(torch.linalg.vector_norm(m - b @ a, dtype=torch.float64))
    else:
        residual = math.sqrt(float((s[k:].double() ** 2).sum()))
    return Factors(a, b, k, min(kept / total, 1.0), residual / math.sqrt(total))
