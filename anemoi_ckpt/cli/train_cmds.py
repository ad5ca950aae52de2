"""``anemoi-ckpt finetune`` and ``anemoi-ckpt pretrain``: the bundled Lightning trainer.

The trainer (Lightning, PEFT, PyYAML) is the optional ``trainer`` extra: it is imported inside the
commands, and its absence is one line saying what to install.
"""

from __future__ import annotations

import logging

from typing import Any

import click

from ..errors import UsageError, one_line
from .main import cli, emit_json


def _trainer() -> Any:
    try:
        import lightning  # noqa: F401
        import peft  # noqa: F401
        import yaml  # noqa: F401
    except ImportError as e:
        raise UsageError(None, f"the trainer needs {e.name or 'lightning, peft and pyyaml'}",
                         "install anemoi-ckpt[trainer]") from None
    from ..trainer import config, run

    return config, run


class _DropBanners(logging.Filter):
    """Lightning's info banners (accelerator availability, product tips, weights_only notes) are
    noise on a terminal running one command; its warnings, errors and the distributed start-up
    lines ("Starting with N processes") stay."""

    NOISE = ("GPU available", "TPU available", "HPU available", "💡", "Tip:", "weights_only",
             "`Trainer.fit` stopped", "LOCAL_RANK")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        message = record.getMessage()
        return not any(word in message for word in self.NOISE)


def _quiet_lightning() -> None:
    import warnings

    import lightning  # noqa: F401 - its handlers exist once it is imported

    drop = _DropBanners()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(drop)
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")


def _run(config_file: str, sets: tuple[str, ...], resume: str | None, as_json: bool, pretrain: bool,
         catalogue: str | None = None, register: bool = False, overwrite: bool = False) -> None:
    config, run = _trainer()
    _quiet_lightning()
    cfg = config.load_config(config_file, sets)
    if catalogue is not None:
        cfg.catalogue = catalogue
    try:
        result = run.train(cfg, resume=resume, pretrain=pretrain, overwrite=overwrite)
    except config.ConfigError as e:
        if e.file is None:  # a key of the configuration: say which file it is in
            raise config.ConfigError(config_file, e.what, e.hint) from None
        raise
    if result.rank != 0:  # Lightning re-executes this command for every other rank: report once
        return
    registered = None
    if register:  # the outputs, by their paths, in the catalogue that resolved uuid: references
        from ..catalogue import default_path, register as register_files

        registered = register_files(cfg.catalogue or default_path(), [result.output, result.training_file])
    if as_json:
        emit_json({**result.to_dict(), **({"registered": registered} if registered else {})})
        return
    click.echo(one_line(f"{result.kind}: {result.output}"))
    for r in registered or []:
        click.echo(one_line(f"registered {r['uuid']} ({r['kind']}) in {cfg.catalogue or default_path()}"))
    click.echo(one_line(f"training state: {result.training_file}"))
    loss = "n/a" if result.train_loss is None else f"{result.train_loss:.6f}"
    # the synthetic task validates on its regional variant; an anemoi run on its validation period
    label = "regional val loss" if result.task == "synthetic" else "val loss"
    click.echo(f"steps {result.steps}  train loss {loss}  {label} "
               f"{result.val_loss_before:.6f} -> {result.val_loss:.6f}")
    for what in ("dropped", "fresh"):
        names = result.resume.get(what) or []
        if names:
            click.echo(one_line(f"optimizer state {what}: {', '.join(names)}"))


_SET = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                    help="Override a config value (dotted key, YAML value), e.g. --set lora.r=16.")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
_REGISTER = click.option("--register", is_flag=True, help="Register the outputs (the model and the "
                         "training file) in the catalogue.")
_CATALOGUE = click.option("--catalogue", type=click.Path(), help="Catalogue resolving uuid:<uuid> in "
                          "base and --resume (overrides the config's catalogue; default: "
                          "$ANEMOI_CKPT_CATALOGUE, else ~/.anemoi-ckpt/catalogue.db).")


#: ``finetune --example NAME``: the shipped example configs (package data of anemoi_ckpt.trainer),
#: printed so that users of an installed wheel, without a source checkout, can start from them.
EXAMPLES = {"lora": "finetune-lora.yaml", "freeze": "finetune-freeze.yaml", "full": "finetune-full.yaml",
            "anemoi-lora": "finetune-anemoi-lora.yaml", "anemoi-freeze": "finetune-anemoi-freeze.yaml"}


def example_text(name: str) -> str:
    """The shipped example config ``name`` (a key of :data:`EXAMPLES`), as text."""
    from importlib.resources import files

    resource = files("anemoi_ckpt.trainer").joinpath("configs", EXAMPLES[name])
    try:
        return resource.read_text(encoding="utf-8")
    except OSError:
        raise UsageError(None, f"the example config {EXAMPLES[name]} is not installed",
                         "reinstall anemoi-ckpt[trainer]") from None


_OVERWRITE = click.option("--overwrite", is_flag=True, help="Replace <name>.anc and <name>-train.anc "
                          "if they exist in output.dir (default: refuse before training).")


@cli.command("finetune")
@click.argument("config_file", metavar="CONFIG.yaml", required=False, type=click.Path())
@_SET
@click.option("--resume", type=click.Path(), help="Continue (or fork) from a training .anc: a path, "
              "a URL or uuid:<uuid> (through the catalogue).")
@click.option("--example", type=click.Choice(list(EXAMPLES)),
              help="Print a shipped example config to stdout and exit (e.g. --example lora > ft.yaml).")
@_CATALOGUE
@_REGISTER
@_OVERWRITE
@_JSON
def finetune_cmd(config_file: str | None, sets: tuple[str, ...], resume: str | None, example: str | None,
                 catalogue: str | None, register: bool, overwrite: bool, as_json: bool) -> None:
    """Fine-tune the base .anc of CONFIG.yaml; `method: full | lora | freeze` picks the mode.

    Writes <output.dir>/<name>.anc (an adapter, a delta or a full model) and <name>-train.anc
    (the training state, for --resume); existing ones are kept unless --overwrite."""
    if example is not None:
        if config_file is not None or sets or resume:
            raise UsageError(None, "--example prints a config and trains nothing: give it alone")
        click.echo(example_text(example), nl=False)
        return
    if config_file is None:
        raise UsageError(None, "finetune needs CONFIG.yaml", "start from one: anemoi-ckpt finetune --example lora")
    _run(config_file, sets, resume, as_json, pretrain=False, catalogue=catalogue, register=register,
         overwrite=overwrite)


@cli.command("pretrain")
@click.argument("config_file", metavar="CONFIG.yaml", type=click.Path())
@_SET
@click.option("--resume", type=click.Path(), help="Continue from a training .anc (a path, a URL or "
              "uuid:<uuid>).")
@_CATALOGUE
@_REGISTER
@_OVERWRITE
@_JSON
def pretrain_cmd(config_file: str, sets: tuple[str, ...], resume: str | None, catalogue: str | None,
                 register: bool, overwrite: bool, as_json: bool) -> None:
    """Train the model of CONFIG.yaml (`model: {builder, config}`) from scratch; writes a full .anc
    (existing outputs are kept unless --overwrite)."""
    _run(config_file, sets, resume, as_json, pretrain=True, catalogue=catalogue, register=register,
         overwrite=overwrite)
