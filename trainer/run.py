"""``finetune`` and ``pretrain``: check everything, train with Lightning, write the ``.anc`` outputs.

Every refusal (config, base, globs, LoRA targets, resume file) happens in :func:`prepare`, before
Lightning starts and before anything is written. Files a run writes, in ``output.dir``:

- ``<name>.anc``: the result - an adapter (lora), a delta (freeze) or a full inference file (full,
  pretrain); see :mod:`.outputs`;
- ``<name>-train.anc``: the training state at the end (resume or fork from it);
- ``checkpoints/step-<N>.anc`` every ``checkpoint_every_n_steps`` (the latest is kept).
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..builders import BuilderError, build_model, builds_from_checkpoint, checkpoint_spec, resolve_builder
from ..errors import AncError
from ..reader import Checkpoint, open_checkpoint
from .config import ConfigError, TrainConfig
from .methods import check_method
from .tasks import VAL_SEED_OFFSET, Task, evaluate, make_task

__all__ = ["RunResult", "Prepared", "prepare", "train", "evaluate", "VAL_SEED_OFFSET"]


@dataclass
class RunResult:
    output: str
    kind: str
    training_file: str
    method: str
    steps: int
    train_loss: float | None
    val_loss: float
    val_loss_before: float
    checkpoints: list[str] = field(default_factory=list)
    resume: dict[str, list[str]] = field(default_factory=dict)
    task: str = "synthetic"  #: what it trained on: the built-in synthetic data, or an anemoi dataset
    rank: int = 0  #: global rank: only rank 0 writes the outputs, and only it reports

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Prepared:
    cfg: TrainConfig
    model: torch.nn.Module          # built, weights loaded, method NOT applied yet
    spec: dict[str, Any]
    base: Checkpoint | None
    resume: Checkpoint | None
    task: Task


def _training_info(ck: Checkpoint) -> dict[str, Any]:
    info = (ck.metadata.model_extra or {}).get("training")
    if ck.kind != "training" or not isinstance(info, dict):
        raise ConfigError(ck.path, f"is not a training file written by this trainer (kind {ck.kind})",
                          "resume from the <name>-train.anc or checkpoints/step-<N>.anc of a run")
    return info


def build_base(base: Checkpoint) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The base's model with its weights, and the spec it was built from: ``metadata.model``, or
    the ``anemoi`` builder for an anemoi file (the installed anemoi-models builds it from the file)."""
    if base.kind not in ("inference", "training"):
        raise ConfigError(base.path, f"the base is a {base.kind} file, not a model")
    try:
        spec = checkpoint_spec(base)
        from_file = builds_from_checkpoint(resolve_builder(spec["builder"]))
        if base.remote is not None:
            base.read_ahead()  # a URL: the weights in one concurrent transfer, not one per tensor
        model = build_model(spec, base)
    except BuilderError as e:
        raise ConfigError(base.path, e.what, e.hint) from None
    except AncError as e:  # the anemoi builder: metadata or weights that do not build
        raise ConfigError(e.file or base.path, e.what, e.hint) from None
    if not from_file:
        base.load_into(model, strict=True)
    return model, spec


def prepare(cfg: TrainConfig, resume: str | None, stack: ExitStack, *, pretrain: bool) -> Prepared:
    """Open, build and check everything a run needs; raise one-line errors, write nothing."""
    if pretrain and cfg.model is None:
        raise ConfigError(None, "pretrain needs model: {builder, config} (not base)")
    if not pretrain and cfg.base is None:
        raise ConfigError(None, "finetune needs base: the .anc to fine-tune (model: is for pretrain)")
    if pretrain and cfg.method != "full":
        raise ConfigError(None, f"pretrain trains every parameter; method {cfg.method!r} is for finetune")
    base = None
    torch.manual_seed(cfg.seed)  # the initial weights of a pretrain
    if cfg.base is not None:
        base = stack.enter_context(open_checkpoint(cfg.base))
        model, spec = build_base(base)
    else:
        assert cfg.model is not None
        spec = cfg.model.model_dump(mode="json")
        try:
            model = build_model(spec)
        except BuilderError as e:
            raise ConfigError(None, f"model: {e.what}", e.hint) from None
    spec = getattr(model, "anemoi_ckpt_spec", spec)
    check_method(model, cfg)
    world = cfg.devices * cfg.num_nodes
    if cfg.data.batch_size % world:
        raise ConfigError(None, f"data.batch_size ({cfg.data.batch_size}) is the global batch: it must divide "
                          f"evenly over the {world} processes (devices {cfg.devices} x num_nodes {cfg.num_nodes})")
    task = make_task(cfg, model, spec, base)
    resume_ck = None
    if resume is not None:
        resume_ck = stack.enter_context(open_checkpoint(resume))
        info = _training_info(resume_ck)
        if base is not None and info.get("base_content_id") != base.content_id:
            raise ConfigError(resume_ck.path, f"was trained from base content id {info.get('base_content_id')}, "
                              f"not {base.content_id} ({os.path.basename(base.path)})",
                              "resume with the base it was trained from")
        if base is None and info.get("model") != spec:
            raise ConfigError(resume_ck.path, "was trained on another model configuration")
        if info.get("method") != cfg.method and "lora" in (info.get("method"), cfg.method):
            raise ConfigError(resume_ck.path, f"was trained with method {info.get('method')!r}, "
                              f"not {cfg.method!r}", "LoRA and non-LoRA runs hold different tensors")
        if cfg.method == "lora":
            _check_resume_rank(resume_ck, cfg.lora.r)
    return Prepared(cfg, model, spec, base, resume_ck, task)


def _check_resume_rank(ck: Checkpoint, r: int) -> None:
    """A LoRA run resumes only with its own rank: the lora_A tensors (shape (rank, in)) of the
    resume file against ``lora.r``. Checked here, before Lightning starts, because its strict load
    would otherwise fail mid-setup with one size-mismatch line per LoRA tensor."""
    weights = ck.tensors("weights")
    ranks = sorted({weights.shape(n)[0] for n in weights if ".lora_A." in n and len(weights.shape(n)) == 2})
    if ranks and ranks != [r]:
        have = " and ".join(str(x) for x in ranks)
        raise ConfigError(ck.path, f"was trained with LoRA rank {have}, the config asks for lora.r {r}",
                          f"resume with --set lora.r={ranks[0]}, or start a new run without --resume"
                          if len(ranks) == 1 else "resume with the run's own LoRA configuration")


def output_paths(cfg: TrainConfig) -> tuple[str, str]:
    """(``<output.dir>/<name>.anc``, ``<output.dir>/<name>-train.anc``): what a run writes."""
    out_dir = os.path.abspath(cfg.output.dir)
    return os.path.join(out_dir, f"{cfg.run_name}.anc"), os.path.join(out_dir, f"{cfg.run_name}-train.anc")


def check_outputs(cfg: TrainConfig, *, overwrite: bool, resume: str | None = None) -> None:
    """Refuse, before anything is built, outputs that exist (unless ``overwrite``) or cannot be
    written: a folder in their place, or output.dir a URL or a file (it is created if missing).
    Resuming from this run's own ``<name>-train.anc`` continues the run in place: its outputs are
    the ones to replace, so that needs no ``overwrite``."""
    from ..output_path import check_output

    train_path = output_paths(cfg)[1]
    if resume is not None and os.path.isfile(resume) and os.path.isfile(train_path) \
            and os.path.samefile(resume, train_path):
        overwrite = True

    if "://" in cfg.output.dir:
        check_output(cfg.output.dir, overwrite=overwrite, kind="dir")
    for p in output_paths(cfg):
        if os.path.isdir(os.path.dirname(p)):
            check_output(p, overwrite=overwrite)
        else:
            check_output(os.path.dirname(p), overwrite=overwrite, kind="dir")


def _check_resume_fits(ck: Checkpoint, model: torch.nn.Module) -> None:
    """The resume file's weights must be this model's tensors (same LoRA targets, same model),
    else Lightning's strict load would fail after setup with a multi-line error."""
    have, want = set(ck.tensors("weights")), set(model.state_dict())
    if have != want:
        extra, missing = sorted(have - want), sorted(want - have)
        what = (f"{len(missing)} tensor(s) of the model are missing (e.g. {missing[0]!r})" if missing
                else f"{len(extra)} tensor(s) are not in the model (e.g. {extra[0]!r})")
        raise ConfigError(ck.path, f"does not fit the model being trained: {what}",
                          "resume with the same model and LoRA targets")


def _trainable(model: torch.nn.Module, cfg: TrainConfig, apply_method: Any,
               apply_memory: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The method (full, freeze, LoRA), then the memory options (bf16 frozen base, checkpointing);
    and what lineage records of the latter."""
    model = apply_method(model, cfg)
    plan = apply_memory(model, activation_checkpointing=cfg.activation_checkpointing, base_dtype=cfg.base_dtype)
    _own_trained(model)
    return model, plan.lineage()


def _own_trained(model: torch.nn.Module) -> None:
    """Give every trained parameter its own memory. An anemoi base's weights are views of the base
    file's copy-on-write map (:mod:`anemoi_ckpt.anemoi.load`), the map the run's open base reads
    too: trained in place, the base would read back the trained values, and a freeze run's delta
    (what differs from the base) would come out empty. Frozen parameters stay views (no copy)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.clone()


def train(cfg: TrainConfig, *, resume: str | None = None, pretrain: bool = False,
          accelerator: str = "auto", durable: bool = True, overwrite: bool = True) -> RunResult:
    """Run a fine-tune (or a pretrain) end to end; see the module docstring for what it writes.
    ``overwrite=False`` refuses outputs that exist, before anything starts."""
    # Lightning re-executes the command for every other rank while rank 0 runs: only rank 0 checks
    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        check_outputs(cfg, overwrite=overwrite, resume=resume)
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from .checkpoint_io import AncCheckpointIO
    from .memory import apply_memory
    from .methods import apply_method
    from .module import BatchLoader, WeatherModule
    from .outputs import training_metadata, write_output
    from .sharding import gather_full_state, is_sharded, make_strategy

    from anemoi_ckpt.remote.fetch import resolve_ref

    # uuid:<uuid> -> the first registered copy that opens as that checkpoint (a path or a URL):
    # a run forks or resumes on any system that can reach one copy, whatever its run id or path.
    if cfg.base is not None:
        cfg = cfg.model_copy(update={"base": resolve_ref(cfg.base, cfg.catalogue)})
    if resume is not None:
        resume = resolve_ref(resume, cfg.catalogue)
    with ExitStack() as stack:
        prep = prepare(cfg, resume, stack, pretrain=pretrain)
        val_before = prep.task.evaluate(prep.model)
        out_dir = os.path.abspath(cfg.output.dir)
        out_path, train_path = output_paths(cfg)
        for p in (out_path, train_path):
            if os.path.isdir(p):
                raise ConfigError(p, "is a folder; output.name must name a file")
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        base_model = prep.model
        model, memory = _trainable(base_model, cfg, apply_method, apply_memory)
        if prep.resume is not None:
            _check_resume_fits(prep.resume, model)
        loader = BatchLoader(prep.task.train, cfg.data.batch_size, cfg.data.seed)
        total = cfg.schedule.total_steps or cfg.max_steps or (cfg.max_epochs or 1) * len(loader)
        module = WeatherModule(model, cfg, loader, total, loss=prep.task.loss)
        operation = "pretrain" if pretrain else "fine-tune"
        parents: list[Any] = [c for c in (prep.base, prep.resume) if c is not None]
        params = {"method": cfg.method, "config": cfg.to_json(), "config_digest": cfg.digest(),
                  "dataset": prep.task.describe(), "memory": memory}
        io = AncCheckpointIO(module.trainable_names, metadata=training_metadata(prep, model),
                             parents=parents, operation=operation, parameters=params, durable=durable)
        callbacks = []
        if cfg.checkpoint_every_n_steps:
            ckpt = ModelCheckpoint(dirpath=os.path.join(out_dir, "checkpoints"), filename="step-{step}",
                                   every_n_train_steps=cfg.checkpoint_every_n_steps, save_top_k=1,
                                   monitor="step", mode="max", auto_insert_metric_name=False,
                                   save_on_train_epoch_end=False)
            ckpt.FILE_EXTENSION = ".anc"
            callbacks.append(ckpt)
        trainer = L.Trainer(accelerator=accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
                            strategy=make_strategy(cfg.strategy, cfg.devices * cfg.num_nodes), precision=cfg.precision,  # type: ignore[arg-type]
                            max_steps=cfg.max_steps or -1, max_epochs=cfg.max_epochs,
                            plugins=[io], callbacks=callbacks, enable_checkpointing=bool(callbacks),
                            logger=False, enable_progress_bar=False, enable_model_summary=False,
                            deterministic=True, num_sanity_val_steps=0, default_root_dir=out_dir)
        trainer.fit(module, train_dataloaders=loader, ckpt_path=resume)
        trainer.save_checkpoint(train_path)  # every rank: a collective under fsdp; rank 0 writes
        if is_sharded(model):
            # FSDP2: gather the full state (a collective) and rebuild the plain model on rank 0
            full = gather_full_state(model)
            if trainer.is_global_zero:
                fresh = build_base(prep.base)[0] if prep.base is not None else build_model(prep.spec)
                model = _trainable(fresh, cfg, apply_method, apply_memory)[0]
                model.load_state_dict(full, strict=True)
        val_after = prep.task.evaluate(model) if trainer.is_global_zero or not is_sharded(model) else float("nan")
        kind = {"lora": "adapter", "freeze": "delta"}.get(cfg.method, "inference")  # rank 0 writes it
        result = RunResult(out_path, kind, train_path, cfg.method, int(trainer.global_step),
                           module.last_loss, val_after, val_before,
                           checkpoints=[p for p in io.written if p != train_path and os.path.exists(p)],
                           resume=dict(io.last_load), task=prep.task.name,
                           rank=int(trainer.global_rank))
        if trainer.is_global_zero:
            lineage = {**params, "steps": result.steps, "train_loss": result.train_loss,
                       "val_loss": val_after, "val_loss_before": val_before,
                       "val_dataset": prep.task.describe_val()}
            result.kind = write_output(prep, model, out_path, operation, lineage, durable=durable)
        return result
