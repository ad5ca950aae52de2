"""The training story of ``anemoi-ckpt demo``: pretrain, fine-tune (LoRA and freeze), merge, convert.

On the built-in ``tiny`` reference model and the synthetic weather data (no download):

1. pretrain a base on the ``global`` variant -> ``base.anc`` (a full inference file naming its
   model builder) and ``base-train.anc`` (its training state);
2. fine-tune it with LoRA on the ``regional`` variant -> ``lora.anc`` (a PEFT adapter);
3. fine-tune it with freeze (only the last processor block and the decoder train) -> ``freeze.anc``
   (a delta holding only the tensors that changed);
4. merge the adapter into the base -> ``base+lora.anc``, and the delta -> ``base+freeze.anc``;
5. convert the freeze run's training file to an inference file (optimizer state dropped) and
   check it holds the same weights as ``base+freeze.anc``;
6. print the lineage tree and the losses on the regional validation set.

Every run goes through the trainer's Python API (:func:`anemoi_ckpt.trainer.run.train`), the
same code as ``anemoi-ckpt pretrain|finetune``. The checks: the base beats persistence on the
global data it was trained on; each fine-tune lowers the regional validation loss of the base; the
merged files give the fine-tuned losses; the converted file's weights equal the merged delta's.
Lightning and PEFT are imported only here (the ``anemoi-ckpt[trainer]`` extra).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The three runs. All use data.seed 1, so they share one regional validation set (seed 10001).
PRETRAIN: dict[str, Any] = {
    "model": {"builder": "reference", "config": {"size": "tiny"}},
    "method": "full",
    "data": {"variant": "global", "n_samples": 256, "seed": 1, "batch_size": 16, "val_samples": 32},
    "optimizer": {"name": "adamw", "lr": 3e-3},
    "schedule": {"name": "cosine", "warmup_steps": 20},
    "max_steps": 300, "seed": 0,
    "output": {"name": "base"},
}
LORA: dict[str, Any] = {
    "method": "lora",
    "lora": {"r": 8, "alpha": 16},  # default targets: the attention and MLP linears
    "data": {"variant": "regional", "n_samples": 128, "seed": 1, "batch_size": 16, "val_samples": 32},
    "optimizer": {"name": "adamw", "lr": 3e-3},
    "max_steps": 150, "seed": 0,
    "output": {"name": "lora"},
}
FREEZE: dict[str, Any] = {
    "method": "freeze",
    "freeze": {"train": ["processor.proc.1", "decoder"]},
    "data": {"variant": "regional", "n_samples": 128, "seed": 1, "batch_size": 16, "val_samples": 32},
    "optimizer": {"name": "adamw", "lr": 1e-3},
    "max_steps": 150, "seed": 0,
    "output": {"name": "freeze"},
}
SKIP_LINE = ("training story skipped: it needs the trainer extra (Lightning, PEFT): "
             "pip install 'anemoi-ckpt[trainer]'")


def trainer_available() -> bool:
    try:
        import lightning  # noqa: F401
        import peft  # noqa: F401
        import yaml  # noqa: F401
    except ImportError:
        return False
    return True


def _quiet() -> None:
    """Lightning's banners ("GPU available", "Seed set") and its advice about dataloader workers
    are noise in a demo on built-in data."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"lightning(\..*)?")
    warnings.filterwarnings("ignore", message=r".*(num_workers|does not have many workers).*")


def _persistence(data: Any) -> float:
    """MSE of predicting "no change" (x_{t+1} = x_t): the floor a useful model must beat."""
    import torch

    total, count = 0.0, 0
    for i in range(len(data)):
        x, y = data[i]
        total += float(torch.sum((x - y) ** 2))
        count += y.numel()
    return total / count


def run_training_story(out: Path, echo: Callable[[str], None] = print, *, first_step: int = 1) -> bool | None:
    """Run the story in ``out/train``; None when the trainer extra is missing (skipped)."""
    if not trainer_available():
        echo("\n" + SKIP_LINE)
        return None
    _quiet()
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread beats OpenMP's per-op syncing, most of all on a busy machine
    try:
        return _story(out, echo, first_step)
    finally:
        torch.set_num_threads(threads)


def _story(out: Path, echo: Callable[[str], None], first_step: int) -> bool:
    from ..adapters import merge
    from ..builders import model_from_checkpoint
    from ..convert import convert
    from ..lineage.view import render_tree
    from ..reader import open_checkpoint
    from ..trainer.config import load_config
    from ..trainer.data import SyntheticWeather
    from ..trainer.run import VAL_SEED_OFFSET, evaluate, train

    work = out / "train"
    work.mkdir(parents=True, exist_ok=True)
    n = first_step
    ok = True
    checks: list[tuple[str, bool]] = []

    def step(text: str) -> None:
        nonlocal n
        echo(f"{n}. {text}")
        n += 1

    def check(what: str, passed: bool) -> None:
        nonlocal ok
        checks.append((what, passed))
        ok &= passed

    def cfg(raw: dict[str, Any], **extra: Any) -> Any:
        data = {**raw, **extra}
        data["output"] = {**raw["output"], "dir": str(work)}
        return load_config(None, data=data)

    echo(f"\n--- the training story (anemoi_ckpt.trainer, files in {work}) ---")
    t0 = time.perf_counter()
    pre = train(cfg(PRETRAIN), pretrain=True, accelerator="cpu")
    base = Path(pre.output)
    with open_checkpoint(base) as ck:
        spec = ck.metadata.model.model_dump(mode="json") if ck.metadata.model else {}
        n_params = sum(t.numel() for t in ck.tensors("weights").values())
    step(f"pretrain reference/tiny ({n_params:,} parameters) on global synthetic weather, "
         f"{pre.steps} steps, {time.perf_counter() - t0:.0f} s -> {base.name} ({pre.kind}, "
         f"builder {spec.get('builder')}) + {Path(pre.training_file).name}")

    # The evaluation sets: the fine-tunes' regional validation set, and a global one for the base.
    r = spec.get("config", {})
    dims = dict(n_lat=r["n_lat"], n_lon=r["n_lon"], n_vars=r["n_vars"])
    d = LORA["data"]
    regional_val = SyntheticWeather(d["val_samples"], seed=d["seed"] + VAL_SEED_OFFSET, variant="regional", **dims)
    global_val = SyntheticWeather(d["val_samples"], seed=d["seed"] + VAL_SEED_OFFSET, variant="global", **dims)
    base_model = model_from_checkpoint(base)
    base_global, persist_global = evaluate(base_model, global_val), _persistence(global_val)
    base_regional, persist_regional = evaluate(base_model, regional_val), _persistence(regional_val)
    check("the base beats persistence on global data", base_global < persist_global)

    runs: dict[str, Any] = {}
    for raw, what in ((LORA, "LoRA r=8 on the attention and MLP linears"),
                      (FREEZE, "freeze (only processor.proc.1 and decoder train)")):
        t0 = time.perf_counter()
        res = train(cfg(raw, base=str(base)), accelerator="cpu")
        runs[raw["method"]] = res
        size = Path(res.output).stat().st_size
        with open_checkpoint(res.output) as ck:
            n_t = len(ck.tensors("weights"))
        step(f"finetune {raw['method']}: {what} on regional data, {res.steps} steps, "
             f"{time.perf_counter() - t0:.0f} s -> {Path(res.output).name} ({res.kind}, {n_t} tensors, "
             f"{size / 1024:.0f} KiB); regional val loss {res.val_loss_before:.4f} -> {res.val_loss:.4f}")
        check(f"{raw['method']} fine-tune lowered the regional validation loss", res.val_loss < res.val_loss_before)
        check(f"{raw['method']} started from the base's loss", abs(res.val_loss_before - base_regional) <= 1e-6 * base_regional)

    merged: dict[str, float] = {}
    for method in ("lora", "freeze"):
        rep = merge(base, [runs[method].output], work / f"base+{method}.anc")
        model = model_from_checkpoint(rep.path)
        merged[method] = evaluate(model, regional_val)
        step(f"merge {base.name} {Path(runs[method].output).name} -> {Path(rep.path).name} "
             f"({len(rep.tensors_changed)} tensors changed); regional val loss {merged[method]:.4f}")
        check(f"the merged {method} model gives the fine-tuned loss",
              abs(merged[method] - runs[method].val_loss) <= 1e-4 * runs[method].val_loss)
        if method == "freeze":
            freeze_merged_id = rep.content_id
        else:
            lora_merged = rep.path

    conv = convert(runs["freeze"].training_file, work / "freeze-inference.anc", to="inference")
    same = conv.content_id == freeze_merged_id
    check("the converted training file holds the merged delta's weights", same)
    step(f"convert {Path(runs['freeze'].training_file).name} --to inference -> {Path(conv.output).name}: "
         + ", ".join(f"{k} {v}" for k, v in conv.tensors.items())
         + f" (optimizer state dropped); weights {'equal' if same else 'DIFFER FROM'} base+freeze.anc's")

    with open_checkpoint(lora_merged) as ck:
        step(f"anemoi-ckpt lineage {Path(lora_merged).name}\n{render_tree(ck.lineage)}")

    lo, fr = runs["lora"], runs["freeze"]
    rows = [("persistence (x[t+1] = x[t])", persist_global, persist_regional),
            ("base (pretrained on global)", base_global, base_regional),
            ("base + LoRA (lora.anc)", None, lo.val_loss),
            ("base + freeze (freeze.anc)", None, fr.val_loss),
            ("base+lora.anc (merged)", None, merged["lora"]),
            ("base+freeze.anc (merged)", None, merged["freeze"])]
    lines = [f"{'model':34s} {'global val':>10s} {'regional val':>12s}"]
    for name, g, rv in rows:
        lines.append(f"{name:34s} {'' if g is None else f'{g:10.4f}':>10s} {rv:12.4f}")
    step("validation losses (MSE of the next state, normalised units)\n" + "\n".join(lines))
    gain = {m: 100 * (1 - runs[m].val_loss / base_regional) for m in runs}
    echo(f"LoRA fine-tune: regional val loss {base_regional:.4f} -> {lo.val_loss:.4f} (-{gain['lora']:.0f}%), "
         f"lower than the base: {'yes' if lo.val_loss < base_regional else 'NO'}")
    echo(f"freeze fine-tune: regional val loss {base_regional:.4f} -> {fr.val_loss:.4f} (-{gain['freeze']:.0f}%), "
         f"lower than the base: {'yes' if fr.val_loss < base_regional else 'NO'}")
    failed = [what for what, passed in checks if not passed]
    echo(f"training story checks: {len(checks) - len(failed)}/{len(checks)} passed"
         + ("" if not failed else " - FAILED: " + "; ".join(failed)))
    return ok
