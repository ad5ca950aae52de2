"""The maths of merging: LoRA deltas, DoRA, and the registry of combination methods.

Pure torch functions in fp32, no I/O. Every method works on the full delta of a tensor,
``ΔW = scale · B·A``, with the scale applied once on the product: combining A and B separately
(PEFT's ``add_weighted_adapter`` for non-SVD types) is not linear in ΔW and needs equal ranks.

Combination methods (``COMBINE[name](deltas, weights, density=, generator=, rank=)``), for the
deltas ``δ_i`` of the adapters that target one tensor and their weights ``w_i``; the TIES/DARE
definitions are PEFT's ``utils/merge_utils.py`` applied to ΔW:

- ``linear``: ``Σ w_i δ_i``.
- ``ties``: trim each ``δ_i`` to its ``k = int(density · numel)`` largest magnitudes (``t_i``);
  elect a sign per element, ``s = +1 if Σ t_i ≥ 0 else -1`` (on the unweighted trimmed values);
  disjoint mean ``Σ_i [sign(t_i) = s] w_i t_i / max(1, Σ_i [sign(t_i) = s])``. With weights 1
  this is the TIES paper's mean of the agreeing values; with other weights it is PEFT's
  definition (weighted sum over agreeing entries divided by their count), not mergekit's
  (divided by the sum of the agreeing weights).
- ``dare_linear``: ``d_i = δ_i · m_i / density`` with ``m_i`` a keep-mask of probability
  ``density`` (each element dropped with ``p = 1 - density``, survivors rescaled by
  ``1/(1-p)``), then ``Σ w_i d_i``.
- ``dare_ties``: the DARE ``d_i`` (no magnitude trim), then TIES sign election and disjoint mean.
- ``svd``: ``linear``, then the best rank-``rank`` approximation ``U_k S_k V_kᵀ`` (a 1-d delta
  cannot be factorised and is kept as is).

DARE masks: ``m_i = torch.rand(δ_i.shape, generator=g) < density``, drawn for the adapters in
order from the one generator the caller seeds, so a result can be recomputed exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch

Tensor = torch.Tensor


_F32_MAX = float(torch.finfo(torch.float32).max)


def f32_scalar(x: float) -> float:
    """``x`` as an fp32 scalar factor: beyond fp32 range it is the infinity it rounds to (torch
    raises on such a Python float as ``alpha``); the merge then refuses the non-finite result."""
    x = float(x)
    return math.copysign(math.inf, x) if math.isfinite(x) and abs(x) > _F32_MAX else x


def lora_delta(A: Tensor, B: Tensor, scale: float, fan_in_fan_out: bool = False) -> Tensor:
    """``ΔW = scale · (B @ A)`` in fp32 for a Linear (A: r×in, B: out×r), transposed to
    (in, out) when the base stores its weight that way (``fan_in_fan_out``)."""
    delta = (B.to(torch.float32) @ A.to(torch.float32)) * scale
    return delta.T if fan_in_fan_out else delta


def embedding_delta(A: Tensor, B: Tensor, scale: float) -> Tensor:
    """``ΔW = scale · (B @ A)ᵀ`` for an Embedding (A: r×num, B: dim×r; weight num×dim)."""
    return ((B.to(torch.float32) @ A.to(torch.float32)) * scale).T


def dora_merge(W: Tensor, delta: Tensor, magnitude: Tensor, transposed: bool = False) -> Tensor:
    """PEFT's DoRA merge: ``W' = m / ‖W + ΔW‖ · (W + ΔW)``, the norm taken per output row of
    the (out, in) matrix (``dim=1``) and treated as a constant (PEFT detaches it; no gradients
    here). ``transposed``: W is stored (in, out) (fan_in_fan_out, and every Embedding, whose
    norm PEFT takes per embedding dimension)."""
    merged = W.to(torch.float32) + delta
    oriented = merged.T if transposed else merged
    norm = torch.linalg.norm(oriented, dim=1)
    factor = (magnitude.to(torch.float32) / norm).view(-1, 1)
    out = factor * oriented
    return out.T if transposed else out


def dora_delta(W: Tensor, delta: Tensor, magnitude: Tensor, transposed: bool = False) -> Tensor:
    """The additive form of a DoRA merge, ``dora_merge(W, ΔW, m) - W``, so DoRA adapters can be
    combined with the other methods like any delta."""
    return dora_merge(W, delta, magnitude, transposed) - W.to(torch.float32)


# --- building blocks of TIES and DARE ---------------------------------------------------------

def _density(density: float) -> float:
    """``density`` if it is a number in (0, 1] (NaN and infinities are not), else ValueError:
    callers (``merge``) check it first and say which option was wrong."""
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], not {density!r}")
    return float(density)


def magnitude_trim(delta: Tensor, density: float) -> Tensor:
    """Keep the ``int(density · numel)`` entries of largest magnitude, zero the rest."""
    density = _density(density)
    k = int(density * delta.numel())
    if k >= delta.numel():
        return delta
    flat = delta.reshape(-1)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.topk(flat.abs(), k=k, largest=True).indices] = True
    return torch.where(mask, flat, torch.zeros_like(flat)).reshape(delta.shape)


def dare_drop(delta: Tensor, density: float, generator: torch.Generator | None) -> Tensor:
    """DARE: drop each entry with probability ``p = 1 - density`` (keep where
    ``rand < density``) and rescale the survivors by ``1 / (1 - p)``."""
    density = _density(density)
    keep = torch.rand(delta.shape, generator=generator, dtype=torch.float32) < density
    return torch.where(keep, delta / density, torch.zeros_like(delta))


def elect_sign(stacked: Tensor) -> Tensor:
    """Per-element sign of the sum over adapters (dim 0); a zero sum elects +1 (as PEFT)."""
    return torch.where(stacked.sum(dim=0) >= 0, 1.0, -1.0)


def disjoint_mean(stacked: Tensor, weights: Sequence[float], elected: Tensor) -> Tensor:
    """``Σ_i [sign(t_i) = s] w_i t_i / max(1, Σ_i [sign(t_i) = s])``: zeros never agree."""
    agree = torch.sign(stacked) == elected
    w = torch.tensor(list(weights), dtype=stacked.dtype).view(-1, *([1] * (stacked.ndim - 1)))
    total = (stacked * w * agree).sum(dim=0)
    return total / agree.sum(dim=0).clamp(min=1)


# --- the registry ------------------------------------------------------------------------------

def linear(deltas: Iterable[Tensor], weights: Sequence[float], **_: object) -> Tensor:
    """``Σ w_i δ_i``, accumulated in place (one delta alive at a time when given lazily)."""
    out: Tensor | None = None
    for d, w in zip(deltas, weights):
        out = d * f32_scalar(w) if out is None else out.add_(d, alpha=f32_scalar(w))
    assert out is not None, "no delta to combine"
    return out


def ties(deltas: Iterable[Tensor], weights: Sequence[float], *, density: float, **_: object) -> Tensor:
    trimmed = torch.stack([magnitude_trim(d, density) for d in deltas])
    return disjoint_mean(trimmed, weights, elect_sign(trimmed))


def dare_linear(deltas: Iterable[Tensor], weights: Sequence[float], *, density: float,
                generator: torch.Generator | None = None, **_: object) -> Tensor:
    return linear((dare_drop(d, density, generator) for d in deltas), weights)


def dare_ties(deltas: Iterable[Tensor], weights: Sequence[float], *, density: float,
              generator: torch.Generator | None = None, **_: object) -> Tensor:
    dropped = torch.stack([dare_drop(d, density, generator) for d in deltas])
    return disjoint_mean(dropped, weights, elect_sign(dropped))


def svd(deltas: Iterable[Tensor], weights: Sequence[float], *, rank: int, **_: object) -> Tensor:
    combined = linear(deltas, weights)
    if combined.ndim != 2:
        return combined
    U, S, Vh = torch.linalg.svd(combined, full_matrices=False)
    k = min(rank, S.numel())
    return (U[:, :k] * S[:k]) @ Vh[:k]


CombineFn = Callable[..., Tensor]
COMBINE: dict[str, CombineFn] = {
    "linear": linear,
    "ties": ties,
    "dare_linear": dare_linear,
    "dare_ties": dare_ties,
    "svd": svd,
}
#: methods that sparsify and so need ``density``
NEEDS_DENSITY = frozenset({"ties", "dare_linear", "dare_ties"})
#: methods that draw random numbers
RANDOM = frozenset({"dare_linear", "dare_ties"})
