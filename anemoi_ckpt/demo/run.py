"""The end-to-end demo behind ``anemoi-ckpt demo`` (``make demo``), on built-in data only.

It walks the main job: write an ``.anc``, verify it; scan and convert a legacy pickle of the
same weights; then an anemoi-style Lightning training checkpoint (real ``torch.save``, real
AdamW state) converted to a training ``.anc``, that to an inference ``.anc``, and the lineage
linking the three; a regional fine-tune split into a LoRA adapter and merged back. Then the
training story (:mod:`.train`): pretrain a base, fine-tune it with LoRA and with freeze on
regional data, merge, convert to inference, lineage and losses. Last (:mod:`.catalogue`):
every file into a catalogue, tagged, its lineage resolved and fetched by uuid. Each step checks
what it claims and the demo fails loudly otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .data import demo_anemoi_metadata, demo_graph, demo_state_dict


def lightning_checkpoint(path: Path, weights: dict[str, Any], md: dict[str, Any], arrays: dict[str, Any]) -> None:
    """What anemoi-training writes (``last.ckpt``): the LightningModule state under ``model.``,
    a real AdamW state for the trainable parameters, hyper-parameters and loop state, plus the
    anemoi metadata appended to the zip as anemoi-utils does."""
    import torch

    params = {n: torch.nn.Parameter(t.clone()) for n, t in weights.items()
              if t.is_floating_point() and ".normalizer." not in n}
    opt = torch.optim.AdamW(params.values(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    for step in range(2):  # two real steps so the moments are not zero
        for p in params.values():
            p.grad = torch.full_like(p, 0.01 * (step + 1))
        opt.step()
    state = {f"model.{n}": t for n, t in weights.items()}  # the weights the demo model holds
    ckpt = {"pytorch-lightning_version": "2.6.0", "epoch": 1, "global_step": 2, "state_dict": state,
            "optimizer_states": [opt.state_dict()], "lr_schedulers": [{"last_epoch": 2}],
            "loops": {"fit_loop": {"epoch_progress": {"total": {"completed": 1}}}},
            "callbacks": {}, "hparams_name": "kwargs",
            "hyper_parameters": {"config": md["config"], "metadata": md}}
    torch.save(ckpt, path)
    _append_anemoi_metadata(path, md, arrays)


def _append_anemoi_metadata(path: Path, md: dict[str, Any], arrays: dict[str, Any]) -> None:
    """anemoi-utils' ``save_metadata``: anemoi.json and raw arrays appended under the zip's root."""
    import json
    import zipfile

    from ..anemoi_meta import arrays_paths, iter_arrays

    with zipfile.ZipFile(path, "a") as zf:
        root = zf.namelist()[0].split("/")[0]
        md = dict(md, supporting_arrays_paths=arrays_paths(root, "anemoi-metadata", arrays))
        zf.writestr(f"{root}/anemoi-metadata/anemoi.json", json.dumps(md))
        for member, arr in iter_arrays(arrays, md["supporting_arrays_paths"]):
            zf.writestr(member, arr.tobytes())


def run_demo(out_dir: str | Path, *, channels: int = 64, layers: int = 2,
             echo: Callable[[str], None] = print, train: bool = True) -> bool:
    """Run every step; returns False if any check failed (the CLI then exits 1). ``train``: also
    run the training story (:mod:`.train`; skipped with one line without the trainer extra)."""
    import torch

    from ..convert import convert
    from ..legacy.scan import scan
    from ..lineage.view import render_tree
    from ..reader import open_checkpoint
    from ..summary import render, summarize
    from ..writer import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ok = True
    md, arrays = demo_anemoi_metadata()
    weights = demo_state_dict(channels=channels, layers=layers)
    path = out / "demo-model.anc"
    save(path, weights, kind="inference",
         metadata={"description": "anemoi-ckpt demo model", "user": {"demo": True}},
         anemoi_metadata=md, supporting_arrays=arrays, sections={"graph": demo_graph()},
         operation="create", parameters={"channels": channels, "layers": layers})
    echo(f"1. wrote {path}\n")
    with open_checkpoint(path) as ck:
        echo(render(summarize(ck)))
        report = ck.verify()
        content_id = ck.content_id
    ok &= report.ok and report.content_id_ok
    echo(f"\n2. verify: {'intact' if report.ok else 'DAMAGED'} ({len(report.sections)} sections, "
         f"content id {'ok' if report.content_id_ok else 'MISMATCH'})")

    # The same weights as a legacy pickle: scanned and converted without ever being unpickled.
    legacy = out / "legacy-weights.pt"
    torch.save(weights, legacy)
    found = scan(legacy)
    echo(f"\n3. scan {legacy}: {len(found.globals)} globals, {found.tensors} tensors, "
         f"{len(found.executing)} would execute code")
    converted = convert(legacy, out / "legacy-weights.anc")
    same = converted.content_id == content_id
    ok &= same
    echo(f"4. convert -> {converted.output}: {converted.verified} tensors verified bit for bit; "
         f"content id {'equals' if same else 'DIFFERS FROM'} the demo model's")

    # Keep only the training checkpoint; make the inference file on demand (decision record 004).
    last = out / "last.ckpt"
    lightning_checkpoint(last, weights, md, arrays)
    training = convert(last, out / "last.anc")
    echo(f"\n5. convert {last} (Lightning) -> {training.output}: "
         + ", ".join(f"{n} {s}" for s, n in training.tensors.items())
         + f"; {training.verified} tensors verified bit for bit")
    inference = convert(out / "last.anc", out / "inference-last.anc", to="inference")
    same = inference.content_id == training.content_id == content_id
    ok &= same
    echo(f"6. convert --to inference -> {inference.output}: "
         + ", ".join(f"{n} {s}" for s, n in inference.tensors.items())
         + f" (optimizer and training state dropped); weights {'equal' if same else 'DIFFER FROM'} "
           "the training weights (same content id)")
    with open_checkpoint(out / "inference-last.anc") as ck:
        echo("\n7. anemoi-ckpt lineage " + str(out / "inference-last.anc") + "\n" + render_tree(ck.lineage))
        ok &= len(ck.lineage.records) == 2
    ok &= _adapter_demo(out, path, weights, md, arrays, echo)
    if train:
        from .train import run_training_story

        ok &= run_training_story(out, echo, first_step=12) is not False
    from .catalogue import run_catalogue_story

    ok &= run_catalogue_story(out, echo)
    return bool(ok)


def _adapter_demo(out: Path, base: Path, weights: dict[str, Any], md: dict[str, Any],
                  arrays: dict[str, Any], echo: Callable[[str], None]) -> bool:
    """A regional fine-tune (rank-4 updates of the attention projections, a retuned bias),
    split into a small LoRA adapter, merged back, and diffed against the fine-tune."""
    import torch

    from ..adapters import merge, split
    from ..compare.diff import diff
    from ..lineage.view import render_tree
    from ..reader import open_checkpoint
    from ..writer import save

    g = torch.Generator().manual_seed(7)
    tuned = dict(weights)
    for name, t in weights.items():
        if ".attention.lin_" in name and name.endswith(".weight"):
            a, b = torch.randn(4, t.shape[1], generator=g), torch.randn(t.shape[0], 4, generator=g)
            tuned[name] = t + 0.01 * (b @ a)
    bias = "model.decoder.0.node_data_extractor.1.bias"
    tuned[bias] = weights[bias] + 0.1
    finetuned = out / "regional-finetune.anc"
    save(finetuned, tuned, anemoi_metadata=md, supporting_arrays=arrays, parents=[base],
         sections={"graph": demo_graph()},
         metadata={"description": "anemoi-ckpt demo model", "user": {"demo": True}},
         operation="fine-tune", parameters={"domain": "demo region", "method": "full"})
    report = split(finetuned, base, out / "regional-lora.anc", rank=4)
    size = (out / "regional-lora.anc").stat().st_size
    worst = max(m.rel_error for m in report.modules)
    echo(f"\n8. split {finetuned.name} --base {base.name} --rank 4 -> regional-lora.anc "
         f"({size / 1024:.0f} KiB, {len(report.modules)} LoRA modules, {len(report.whole)} tensor(s) "
         f"kept whole, worst relative error {worst:.1e})")
    merged = merge(base, [out / "regional-lora.anc"], out / "demo-model+regional-lora.anc")
    echo(f"9. merge {base.name} regional-lora.anc -> {Path(merged.path).name}")
    d = diff(finetuned, merged.path, atol=1e-5)
    # A merge forks the anemoi run: a new run id and the base's uuid as parent_uuid. Those are the
    # only metadata differences allowed; every tensor must agree within the tolerance.
    fork = {"anemoi.run_id", "anemoi.parent_uuid"}
    same = (not any(c.significant for s in d.sections for c in s.changes)
            and not any(c.significant for c in d.supporting_arrays)
            and {m.path for m in d.metadata} <= fork)
    echo(f"10. diff regional-finetune.anc {Path(merged.path).name} --atol 1e-5: "
         + ("tensors identical within tolerance; metadata: the merge forked the anemoi run "
            "(new run_id, parent_uuid)" if same else "DIFFERENT"))
    with open_checkpoint(merged.path) as ck:
        echo("\n11. anemoi-ckpt lineage " + Path(merged.path).name + "\n" + render_tree(ck.lineage))
    return same
