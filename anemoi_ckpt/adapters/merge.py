"""``merge(base, adapters)``: LoRA adapters and freeze deltas folded into a base ``.anc``.

Everything is checked before a byte is written (base identity, modules, shapes, options), then
the base's ``weights`` are streamed tensor by tensor: a tensor no adapter touches is copied
unchanged (read with ``pread`` into a reused buffer from a local base, else the reader's view);
a targeted one gets, in fp32,

1. the whole-tensor replacements first (kind ``delta`` files, PEFT ``modules_to_save`` and
   trained biases): ``W <- W + w (R - W)``, i.e. exactly ``R`` at weight 1; two adapters
   replacing one tensor are refused, since replacements do not combine;
2. then the LoRA deltas of the adapters that target it (``scale · B@A``; DoRA as its additive
   form ``m/‖W+ΔW‖·(W+ΔW) - W`` with W from step 1), combined by ``method`` (:mod:`.maths`),

and is cast back to the base dtype. Memory: the largest tensor and its deltas.

The output keeps the base's ``graph``/``buffers`` sections and supporting arrays, never a training
base's optimizer or state. Its anemoi metadata is the base's with the merge recorded as a forked
run (:func:`anemoi_ckpt.anemoi_meta.derived`: new uuid and run id, the base's run as
``fork_run_id``, its uuid as ``parent_uuid``).

One DoRA adapter at weight 1 equals PEFT's ``merge_and_unload``. Several DoRA adapters on one
tensor are combined through their additive forms, each normalised on the unmerged weight; PEFT's
sequential merge instead rescales the already-merged weight, which depends on the order.

``weights`` has one entry per adapter (a file holding several adapters counts each). DARE draws
from a generator seeded by ``sha256(seed, tensor name)``, so results do not depend on the order
or the set of tensors written.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import uuid as uuidlib
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..anemoi_meta import derived
from ..errors import AncError, FormatError, UsageError
from ..container.dtypes import CODE_TO_TORCH, ITEMSIZE
from ..container.mapped import BufferPool, page_releaser, pread_into
from ..output_path import check_output
from ..progress import Progress
from ..reader import Checkpoint, open_checkpoint
from ..writer import Writer
from . import lora_config as LC, maths
from .model import Adapter, open_adapters
from .peft_keys import base_tensor_name, group_keys

if TYPE_CHECKING:
    from ..lineage.signers import SignerStatus, TrustPolicy

#: Tensor sections an inference file keeps beside ``weights`` (as ``convert --to inference``).
KEPT_SECTIONS = ("graph", "buffers")
#: Base metadata.json keys describing adapters: meaningless once they are merged.
_ADAPTER_KEYS = ("adapter", "adapters", "peft_config")

DeltaFn = Callable[[torch.Tensor], torch.Tensor]  # fp32 W (after replacements) -> fp32 ΔW


@dataclass
class MergeReport:
    path: str
    uuid: str
    content_id: str
    method: str
    tensors_changed: list[str]
    #: per adapter: name, source file, kind, modules (or tensors) applied
    adapters: list[dict[str, Any]] = field(default_factory=list)
    forced: list[str] = field(default_factory=list)
    #: with require_signed: base then each input file, the verified signature (signer, method,
    #: form, digest, where it was read)
    signed: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Plan:
    replace: dict[str, tuple[int, torch.Tensor]] = field(default_factory=dict)
    deltas: dict[str, list[tuple[int, DeltaFn]]] = field(default_factory=dict)
    applied: list[list[str]] = field(default_factory=list)


def _check_options(method: str, n: int, weights: Sequence[float] | None, density: float | None,
                   rank: int | None) -> list[float]:
    if method not in maths.COMBINE:
        raise UsageError(None, f"unknown merge method {method!r}", f"one of {', '.join(maths.COMBINE)}")
    if weights is not None and not all(_real(x) for x in weights):
        raise UsageError(None, f"weights must be finite numbers, not {list(weights)!r}"[:300])
    w = [1.0] * n if weights is None else [float(x) for x in weights]
    if not all(math.isfinite(x) for x in w):
        raise UsageError(None, f"weights must be finite numbers, not {w}")
    if len(w) != n:
        raise UsageError(None, f"{len(w)} weights for {n} adapters", "give one weight per adapter")
    if method in maths.NEEDS_DENSITY:
        if not _real(density) or not 0 < density <= 1:  # type: ignore[operator]
            raise UsageError(None, f"method {method} needs a density in (0, 1], not {density}")
    elif density is not None:
        raise UsageError(None, f"--density applies to ties, dare_linear and dare_ties, not {method}")
    if method == "svd":
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise UsageError(None, "method svd needs a rank >= 1 (--rank)")
    elif rank is not None:
        raise UsageError(None, f"--rank applies to method svd, not {method}")
    return w


def _real(x: object) -> bool:
    """A real number float() takes without overflow (not a bool, string or None)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        return False
    try:
        float(x)
    except OverflowError:
        return False
    return True


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(None, f"seed must be an integer, not {seed!r}"[:300])
    return seed


#: Elements checked at a time for non-finite values (a bounded temporary: 4 Mi booleans).
_FINITE_CHUNK = 1 << 22


def _first_new_nonfinite(before: torch.Tensor | None, after: torch.Tensor) -> int | None:
    """Flat index of the first element of ``after`` that is not finite where ``before`` is (every
    element when ``before`` is None), or None. Chunked, so the temporaries stay a few MiB
    whatever the tensor size."""
    if not (after.is_floating_point() or after.is_complex()):
        return None
    # Fast exact path: a NaN or an infinity anywhere makes the sum NaN or infinite, so a finite
    # sum proves every element finite. One reduction, no tensor-sized temporaries: the chunked
    # masks below, per merged tensor, grew the heap by ~0.4 GB over a 0.5 GB merge (freed blocks
    # glibc keeps). A sum that overflows is only inconclusive: the chunked scan then decides.
    if bool(torch.isfinite(after.sum())):
        return None
    a = after.reshape(-1)
    b = None if before is None or not (before.is_floating_point() or before.is_complex()) \
        else before.reshape(-1)
    for start in range(0, a.numel(), _FINITE_CHUNK):
        bad = ~torch.isfinite(a[start:start + _FINITE_CHUNK])
        if b is not None:
            bad &= torch.isfinite(b[start:start + _FINITE_CHUNK])
        hit = torch.nonzero(bad)
        if hit.numel():
            return start + int(hit[0, 0])
    return None


def _check_finite(t: torch.Tensor, file: str, what: str) -> None:
    """Refuse an adapter tensor holding NaN or infinity (one line naming file and tensor)."""
    if _first_new_nonfinite(None, t) is not None:
        raise FormatError(file, f"{what} holds non-finite values (NaN or infinity)")


def _shape(base: Checkpoint, name: str) -> tuple[int, ...]:
    bt = base.tensors("weights")
    return tuple(bt.entries[bt.aliases.get(name, name)].shape)


def _target(base: Checkpoint, ad: Adapter, name: str, what: str) -> str:
    """The stored base tensor ``name`` refers to (aliases resolved), or a one-line refusal."""
    bt = base.tensors("weights")
    if name not in bt:
        raise FormatError(ad.source[0], f"adapter {ad.name!r}: {what} {name!r} is not in the base "
                          f"{os.path.basename(base.path)}", "was it trained on another model?")
    return bt.aliases.get(name, name)


def _shape_check(base: Checkpoint, ad: Adapter, name: str, got: tuple[int, ...], what: str) -> None:
    want = _shape(base, name)
    if tuple(got) != want:
        raise FormatError(ad.source[0], f"adapter {ad.name!r}: {what} for {name!r} has shape "
                          f"{list(got)}, the base tensor {list(want)}")


def _plan_lora(base: Checkpoint, ad: Adapter, i: int, plan: _Plan) -> list[str]:
    file, cfg = ad.source[0], ad.config
    LC.check_config(cfg, file)
    fifo, dora = LC.fan_in_fan_out(cfg), LC.use_dora(cfg)
    modules, whole = group_keys(ad.tensors.keys(), file)
    applied = []
    for mk in modules.values():
        p = {part: ad.tensors[key] for part, key in mk.parts.items()}
        r, _ = LC.rank_alpha(cfg, mk.module, file)
        scale = LC.lora_scale(cfg, mk.module, file)
        A, B = (p["embedding_A"], p["embedding_B"]) if mk.embedding else (p["lora_A"], p["lora_B"])
        if A.ndim != 2 or B.ndim != 2:
            raise FormatError(file, f"module {mk.module!r}: LoRA on convolutions is not supported by merge")
        if A.shape[0] != r or B.shape[1] != r:
            raise FormatError(file, f"module {mk.module!r}: LoRA tensors have rank {A.shape[0]}, "
                              f"adapter_config.json says {r}")
        for part, t in p.items():
            _check_finite(t, file, f"module {mk.module!r}: {part}")
        name = _target(base, ad, base_tensor_name(mk.module), "module")
        if mk.embedding:
            shape, transposed = (A.shape[1], B.shape[0]), True
            fn: Callable[[], torch.Tensor] = lambda A=A, B=B, s=scale: maths.embedding_delta(A, B, s)
        else:
            shape, transposed = ((A.shape[1], B.shape[0]) if fifo else (B.shape[0], A.shape[1])), fifo
            fn = lambda A=A, B=B, s=scale: maths.lora_delta(A, B, s, fifo)
        _shape_check(base, ad, name, shape, "the LoRA delta")
        if "magnitude" in p:
            m = p["magnitude"]
            if m.numel() != shape[1 if transposed else 0]:
                raise FormatError(file, f"module {mk.module!r}: DoRA magnitude has {m.numel()} entries "
                                  f"for a {list(shape)} weight")
            delta: DeltaFn = lambda W, fn=fn, m=m, t=transposed: maths.dora_delta(W, fn(), m, t)
        elif dora:
            raise FormatError(file, f"module {mk.module!r}: use_dora is set but the adapter has no "
                              "lora_magnitude_vector")
        else:
            delta = lambda W, fn=fn: fn()
            if not mk.embedding:  # plain LoRA: the linear method fuses it into one addmm
                delta.lora = (A, B, scale, fifo)  # type: ignore[attr-defined]
        plan.deltas.setdefault(name, []).append((i, delta))
        if "lora_B_bias" in p:  # lora_bias=True: the bias moves by scale · b (PEFT's merge)
            bias = _target(base, ad, base_tensor_name(mk.module, "lora_B_bias"), "bias")
            _shape_check(base, ad, bias, tuple(p["lora_B_bias"].shape), "lora_B.bias")
            plan.deltas.setdefault(bias, []).append(
                (i, lambda W, b=p["lora_B_bias"], s=scale: b.to(torch.float32) * s))
        applied.append(mk.module)
    for name, key in whole.items():
        applied.append(_plan_replace(base, ad, i, name, ad.tensors[key], plan))
    for name, t in ad.extra.get("delta_tensors", {}).items():
        applied.append(_plan_replace(base, ad, i, name, t, plan))
    return applied


def _attach_delta_section(ck: Checkpoint, found: list[Adapter]) -> None:
    """``split`` keeps what PEFT cannot express whole in the section named by
    ``adapter.delta_section`` of an adapter file: it belongs to the file's own adapter."""
    info = (ck.metadata.model_extra or {}).get("adapter")
    section = info.get("delta_section") if isinstance(info, dict) else None
    if section:
        for ad in found:
            if ad.kind == "lora" and "section" not in ad.extra:
                ad.extra["delta_tensors"] = ck.tensors(section)


def _plan_replace(base: Checkpoint, ad: Adapter, i: int, name: str, t: torch.Tensor, plan: _Plan) -> str:
    target = _target(base, ad, name, "tensor")
    _shape_check(base, ad, target, tuple(t.shape), "the replacement tensor")
    if target in plan.replace:
        raise UsageError(ad.source[0], f"adapter {ad.name!r} and another adapter both replace "
                         f"{target!r}", "merge them one at a time")
    plan.replace[target] = (i, t)
    return name


def _fused(name: str, plan: _Plan, method: str) -> bool:
    """Whether ``name``'s merge is plain LoRA deltas summed (``linear``) with no replacement:
    the path computed as fused multiply-adds into one fp32 buffer holding W."""
    changes = plan.deltas.get(name)
    return bool(changes) and name not in plan.replace and method == "linear" \
        and all(hasattr(fn, "lora") for _, fn in changes)


def _merged(W: torch.Tensor, name: str, plan: _Plan, w: list[float], method: str,
            density: float | None, rank: int | None, seed: int,
            into: torch.Tensor | None = None, filled: bool = False) -> torch.Tensor:
    """One output tensor: replacements, then the combined LoRA deltas, in fp32 (computed in
    ``into``, an fp32 buffer of W's shape, when given and the fused path applies; ``filled``:
    ``into`` already holds W's values, read from the file)."""
    W32 = W.to(torch.float32)
    if name in plan.replace:
        i, R = plan.replace[name]
        R32 = R.to(torch.float32)
        W32 = R32 if w[i] == 1.0 else W32 + maths.f32_scalar(w[i]) * (R32 - W32)
    changes = plan.deltas.get(name)
    if changes and method == "linear" and all(hasattr(fn, "lora") for _, fn in changes):
        # W + Σ wᵢ·sᵢ·(Bᵢ@Aᵢ) as fused multiply-adds into one fp32 copy of W: no full-size
        # temporaries (the unfused sum makes four per adapter); same maths, fp32 rounding.
        if into is not None and filled and name not in plan.replace:
            out = into
        elif into is not None:
            out = into.copy_(W32)
        else:
            out = W32.clone() if W32.data_ptr() == W.data_ptr() else W32
        for i, fn in changes:
            A, B, s, fifo = fn.lora
            A32, B32 = A.to(torch.float32), B.to(torch.float32)
            c = maths.f32_scalar(w[i] * s)
            if fifo:
                out.addmm_(A32.T, B32.T, alpha=c)
            else:
                out.addmm_(B32, A32, alpha=c)
        return out.to(W.dtype)
    if changes:
        gen = None
        if method in maths.RANDOM:
            digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        combined = maths.COMBINE[method]((fn(W32) for _, fn in changes), [w[i] for i, _ in changes],
                                         density=density, generator=gen, rank=rank)
        W32 = W32 + combined
    return W32.to(W.dtype)


def _same(a: str, b: str) -> bool:
    try:
        if os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return os.path.abspath(a) == os.path.abspath(b)


def _default_out(base_path: str, adapter_paths: Sequence[str]) -> str:
    stem = lambda p: os.path.splitext(os.path.basename(p))[0]  # noqa: E731
    name = "+".join([stem(base_path), *(stem(p) for p in adapter_paths)]) + ".anc"
    return os.path.join(os.path.dirname(os.path.abspath(base_path)), name)


def _check_not_swapped(base_ck: Checkpoint, paths: Sequence[str]) -> None:
    """BASE first, then the adapters: an adapter or delta given as BASE with a model among the
    adapters is the arguments swapped - say so, instead of "holds no adapter" about the model."""
    if base_ck.kind not in ("adapter", "delta"):
        return
    for p in paths:
        try:
            with open_checkpoint(p) as ck:
                kind = ck.kind
        except AncError:
            continue  # unreadable: open_adapters reports it in its own words
        if kind in ("inference", "training"):
            raise UsageError(base_ck.path, f"is {'an adapter' if base_ck.kind == 'adapter' else 'a delta'}, "
                             f"and {p} is a model: the arguments are swapped",
                             f"give the model first: merge {p} {base_ck.path}")


def merge(base: str | os.PathLike | Checkpoint, adapters: Sequence[str | os.PathLike],
          out: str | os.PathLike | None = None, *, weights: Sequence[float] | None = None,
          method: str = "linear", density: float | None = None, seed: int = 0,
          rank: int | None = None, force: bool = False, durable: bool = True,
          progress: bool | None = None, overwrite: bool = True,
          require_signed: "TrustPolicy | None" = None) -> MergeReport:
    """Merge the adapters in ``adapters`` (paths of ``.anc`` files of kind adapter or delta, or
    with adapters attached) into ``base`` and write a full inference ``.anc``. See the module
    docstring for the order of operations; every refusal happens before anything is written.

    ``require_signed`` (a :class:`~anemoi_ckpt.lineage.signers.TrustPolicy`): the base and every
    adapter file must be signed by a signer it trusts, each adapter signed for this base
    (:mod:`.signed`); the verified signatures are recorded in the output's lineage."""
    if not adapters:
        raise UsageError(None, "no adapter to merge")
    if require_signed is not None and force:
        raise UsageError(None, "--force and --require-signed contradict each other",
                         "a signed adapter is merged only into the base it was signed for")
    paths = [os.fspath(p) for p in adapters]
    with ExitStack() as stack:
        if isinstance(base, Checkpoint):
            base_ck = base
        else:
            base_ck = stack.enter_context(open_checkpoint(base))
        dst = os.fspath(out) if out is not None else _default_out(base_ck.path, paths)
        for src in (base_ck.path, *paths):
            if _same(src, dst):
                raise UsageError(dst, "the output is an input file", "write to a new path (-o)")
        check_output(dst, overwrite=overwrite)  # before reading a single adapter tensor
        _check_not_swapped(base_ck, paths)
        files: list[Checkpoint] = []
        ads: list[Adapter] = []
        for p in paths:
            ck, found = open_adapters(p)
            stack.callback(ck.close)
            files.append(ck)
            _attach_delta_section(ck, found)
            ads.extend(found)
        signed = None
        if require_signed is not None:  # before any adapter tensor is read
            from .signed import check_signed_inputs

            signed = check_signed_inputs(base_ck, files, require_signed)
        w = _check_options(method, len(ads), weights, density, rank)
        seed = _check_seed(seed)
        forced = []
        for ad in ads:
            if ad.base_content_id != base_ck.content_id:
                if not force and ad.base_content_id is None:
                    raise FormatError(ad.source[0], f"adapter {ad.name!r} records no base",
                                      "convert it with --base BASE, or use --force to merge it anyway")
                if not force:
                    raise FormatError(ad.source[0], f"adapter {ad.name!r} was made for base content id "
                                      f"{ad.base_content_id}, not {base_ck.content_id} "
                                      f"({os.path.basename(base_ck.path)})",
                                      "use --force to merge it anyway")
                forced.append(ad.name)
        plan = _Plan()
        for i, ad in enumerate(ads):
            if ad.kind == "delta":
                plan.applied.append([_plan_replace(base_ck, ad, i, n, t, plan) for n, t in ad.tensors.items()])
            else:
                plan.applied.append(_plan_lora(base_ck, ad, i, plan))
        # Pages are released behind the stream only on a map this call opened: a caller's open
        # Checkpoint may hold tensors it changed in place (private copy-on-write pages).
        return _write(base_ck, files, ads, plan, dst, w, method, density, seed, rank, forced,
                      durable, progress, release_pages=not isinstance(base, Checkpoint), signed=signed)
    raise AssertionError("unreachable")  # pragma: no cover - ExitStack does not swallow


def _check_result(W: torch.Tensor, t: torch.Tensor, name: str, plan: _Plan, ads: list[Adapter],
                  w: list[float]) -> None:
    """Refuse (before the output is committed) a merged tensor that is non-finite where the base
    was finite: an absurd scale or weight, an overflow of the base dtype, a DoRA norm of zero."""
    at = _first_new_nonfinite(W, t)
    if at is None:
        return
    who = sorted({i for i, _ in plan.deltas.get(name, [])}
                 | ({plan.replace[name][0]} if name in plan.replace else set()))
    names = ", ".join(f"{ads[i].name!r} (weight {w[i]:g})" for i in who)
    raise FormatError(ads[who[0]].source[0] if who else None,
                      f"merging {names} into {name!r} gives a non-finite value at element {at} "
                      f"where the base is finite (dtype {str(t.dtype).replace('torch.', '')})",
                      "check lora_alpha, the DoRA magnitudes and --weights; nothing was written")


def _itemsize(code: str) -> int:
    return ITEMSIZE.get(code, 4) or 1


def _write(base: Checkpoint, files: list[Checkpoint], ads: list[Adapter], plan: _Plan, dst: str,
           w: list[float], method: str, density: float | None, seed: int, rank: int | None,
           forced: list[str], durable: bool, progress: bool | None,
           release_pages: bool = True, signed: "list[SignerStatus] | None" = None) -> MergeReport:
    from .signed import lineage_parents

    bt = base.tensors("weights")
    specs = [(n, bt.entries[bt.aliases.get(n, n)].dtype, tuple(bt.entries[bt.aliases.get(n, n)].shape),
              bt.entries[bt.aliases.get(n, n)].nbytes) for n in bt]
    kept = [s for s in KEPT_SECTIONS if s in base.tensor_sections()]
    total = sum(e.nbytes for e in bt.entries.values())
    total += sum(e.nbytes for s in kept for e in base.tensors(s).entries.values())
    extra = base.metadata.model_dump(mode="json")
    for key in ("schema_version", *_ADAPTER_KEYS):
        extra.pop(key, None)
    # A merged fine-tune is a new anemoi checkpoint forked from the base: new uuid (the writer's),
    # new run id, the base's run as fork_run_id and its uuid as parent_uuid.
    md = derived(base.anemoi_metadata, str(uuidlib.uuid4())) if base.anemoi_metadata else None
    params = {"method": method, "weights": w, "density": density, "seed": seed, "rank": rank,
              "adapters": [ad.name for ad in ads], "forced": bool(forced),
              **({"forced_adapters": forced} if forced else {})}
    changed = sorted(set(plan.replace) | set(plan.deltas))
    with Progress.for_bytes(total, f"merging into {os.path.basename(dst)}", progress) as bar, \
            Writer(dst, kind="inference", metadata=extra, anemoi_metadata=md,
                   supporting_arrays=base.supporting_arrays if md else None,
                   parents=lineage_parents(base, files, signed), operation="merge", parameters=params,
                   progress=bar, durable=durable) as wr:
        wr.begin_section("weights", specs)
        release = page_releaser(base._mm if release_pages else None)
        largest = max((bt.entries[n].nbytes * 4 // max(1, _itemsize(bt.entries[n].dtype))
                       for n in changed if n in bt.entries), default=4)
        pool = BufferPool(largest)
        # A local base this call opened is read with pread into the pool's buffers rather than
        # through its map (a page fault per 4 KiB, 5x the CPU time). Not a caller's Checkpoint:
        # its map may hold tensors changed in place, which the file does not have. Nor a
        # compressed base (format 1.2): its stored bytes are frames, decoded by the mapping.
        fd = base._fh.fileno() if release_pages and base.remote is None and base._mm is not None \
            and bt.frames is None else None
        for name in bt.entries:
            e = bt.entries[name]
            if fd is not None and name not in plan.replace and name not in plan.deltas \
                    and 0 < e.nbytes <= pool.nbytes and e.dtype in CODE_TO_TORCH:
                raw, give_back = pool.take_bytes(e.nbytes)
                pread_into(fd, bt._offsets[name], raw)
                t = raw.view(CODE_TO_TORCH[e.dtype]).view(tuple(e.shape))
                wr.add(name, t, release=give_back, detect_alias=False)  # back to the pool once hashed
                continue
            view = bt[name]
            t = view
            if name in plan.replace or name in plan.deltas:
                into, give_back = pool.take(tuple(view.shape))
                filled = fd is not None and e.dtype == "F32" and e.nbytes > 0 and _fused(name, plan, method)
                if filled:  # W's bytes straight from the file into the buffer the sum is made in
                    pread_into(fd, bt._offsets[name], into.reshape(-1).view(torch.uint8))
                t = _merged(view, name, plan, w, method, density, rank, seed, into, filled)
                _check_result(view, t, name, plan, ads, w)
                free = release(view)  # the base's pages are no longer needed once read
                if free is not None:
                    free()
                if t.data_ptr() == into.data_ptr():
                    wr.add(name, t, release=give_back, detect_alias=False)  # returns once hashed
                else:
                    give_back()
                    wr.add(name, t)
            else:
                wr.add(name, t, release=release(view))
        for alias, target in bt.aliases.items():
            wr.add_alias(alias, target)
        for sec in kept:
            wr.add_section(sec, base.tensors(sec))
    assert wr.content_id is not None
    report = [{"name": ad.name, "source": ad.source[0], "kind": ad.kind, "modules": mods}
              for ad, mods in zip(ads, plan.applied)]
    return MergeReport(dst, wr.uuid, wr.content_id, method, changed, report, forced,
                       [st.to_dict() for st in signed or []])


__all__ = ["MergeReport", "merge"]
