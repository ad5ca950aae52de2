"""The trainer's configuration: one YAML file, validated by pydantic, ``--set key.sub=value`` on top.

``method: full | lora | freeze`` is the single switch between fine-tuning modes; everything else
has defaults. Unknown keys and wrong types are refused with one line naming the key
(:class:`ConfigError`), before anything is built or written. Only pydantic and PyYAML are imported
here, so the CLI can validate a configuration without Lightning.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import UsageError, one_line

#: PEFT's usual choice for attention models: the attention and MLP linears of every block (of the
#: reference model; an anemoi model's defaults depend on its processor type: see
#: :func:`anemoi_ckpt.trainer.methods.default_lora_targets`).
DEFAULT_LORA_TARGETS = [
    "processor.proc.*.attention.lin_q", "processor.proc.*.attention.lin_k",
    "processor.proc.*.attention.lin_v", "processor.proc.*.attention.projection",
    "processor.proc.*.mlp.mlp.0", "processor.proc.*.mlp.mlp.2",
]
#: Lightning precision strings the trainer accepts (YAML may give 32 or 16 as numbers).
PRECISIONS = ("32-true", "32", "64-true", "64", "bf16-mixed", "bf16-true", "16-mixed", "16-true")


class ConfigError(UsageError):
    """A configuration that cannot be trained: unknown key, wrong type, glob matching nothing..."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    builder: str
    config: dict[str, Any] = Field(default_factory=dict)


class LoraConfig(_Strict):
    r: int = Field(default=8, ge=1)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    #: None: the model's defaults (the reference model's DEFAULT_LORA_TARGETS; for an anemoi model
    #: the attention and MLP linears of its processor type)
    targets: list[str] | None = Field(default=None, min_length=1)
    use_rslora: bool = False
    use_dora: bool = False


class FreezeConfig(_Strict):
    """Either the modules to freeze or the modules to keep trainable (everything else frozen)."""

    freeze: list[str] | None = None
    train: list[str] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> "FreezeConfig":
        if (self.freeze is None) == (self.train is None):
            raise ValueError("give exactly one of freeze.freeze (globs to freeze) or freeze.train "
                             "(globs to keep trainable)")
        return self


class PeriodConfig(_Strict):
    """A period of an anemoi dataset, inclusive at both ends, as anemoi-datasets reads dates."""

    start: str | int
    end: str | int


#: Keys of the built-in synthetic data that mean nothing for an anemoi-datasets dataset.
SYNTHETIC_ONLY = ("variant", "n_samples", "n_lat", "n_lon", "val_samples")


class DataConfig(_Strict):
    #: What anemoi-datasets' open_dataset accepts (a path, a URL, a dict of its options); an anemoi
    #: base needs one, the reference model trains on the built-in synthetic data without.
    dataset: str | dict[str, Any] | None = None
    #: the training period of ``dataset`` (default: the dataset's first/last date)
    start: str | int | None = None
    end: str | int | None = None
    #: the held-out period the validation loss is measured on (required with ``dataset``)
    validation: PeriodConfig | None = None
    variant: Literal["global", "regional"] = "regional"
    n_samples: int = Field(default=64, ge=1)
    seed: int = 0
    batch_size: int = Field(default=8, ge=1)
    #: the grid comes from the model; these, when given, must agree with it
    n_lat: int | None = Field(default=None, ge=1)
    n_lon: int | None = Field(default=None, ge=1)
    #: samples of the regional validation set the final loss is measured on (its own seed)
    val_samples: int = Field(default=16, ge=1)

    @model_validator(mode="after")
    def _one_kind(self) -> "DataConfig":
        if self.dataset is None:
            for key in ("start", "end", "validation"):
                if getattr(self, key) is not None:
                    raise ValueError(f"data.{key} is a period of data.dataset, and no dataset is given")
            return self
        given = sorted(set(SYNTHETIC_ONLY) & self.model_fields_set)
        if given:
            raise ValueError(f"data.{given[0]} is an option of the built-in synthetic data; with "
                             "data.dataset the data come from the dataset")
        if self.validation is None:
            raise ValueError("data.validation: give {start, end}, a period of the dataset the run "
                             "never trains on (the validation loss is measured there)")
        return self


class OptimizerConfig(_Strict):
    name: Literal["adamw"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)


class ScheduleConfig(_Strict):
    name: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(default=0, ge=0)
    #: length of the cosine; default max_steps (or epochs x batches). Fix it when a run is to be
    #: stopped and resumed with a longer max_steps, so the schedule does not depend on where it stops.
    total_steps: int | None = Field(default=None, ge=1)


class OutputConfig(_Strict):
    dir: str = "runs"
    name: str | None = None


class TrainConfig(_Strict):
    #: A path, a URL (s3://, https://) or ``uuid:<uuid>``, found through ``catalogue``.
    base: str | None = None
    #: The catalogue resolving ``uuid:`` references in ``base`` and ``--resume`` (default:
    #: $ANEMOI_CKPT_CATALOGUE, else ~/.anemoi-ckpt/catalogue.db).
    catalogue: str | None = None
    model: ModelConfig | None = None
    method: Literal["full", "lora", "freeze"] = "full"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    freeze: FreezeConfig | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    max_steps: int | None = Field(default=None, ge=1)
    max_epochs: int | None = Field(default=None, ge=1)
    precision: str = "32-true"
    seed: int = 0
    output: OutputConfig = Field(default_factory=OutputConfig)
    checkpoint_every_n_steps: int | None = Field(default=None, ge=1)
    #: forecast steps per training sample (anemoi's rollout; anemoi bases only)
    rollout: int = Field(default=1, ge=1)
    #: recompute activations in the backward pass (the reference model's processor blocks; for an
    #: anemoi model anemoi-models' own checkpointing of its mappers and processor chunks): less
    #: memory, more compute. Unset: as the model is built (anemoi-models builds with it on, the
    #: reference model with it off).
    activation_checkpointing: bool | None = None
    #: the dtype frozen base weights are held in under lora and freeze (the trained parameters
    #: stay fp32); bf16 halves the frozen base's memory
    base_dtype: Literal["fp32", "bf16"] = "fp32"
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    devices: int = Field(default=1, ge=1)
    num_nodes: int = Field(default=1, ge=1)

    @field_validator("precision", mode="before")
    @classmethod
    def _precision(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if isinstance(v, str) and v not in PRECISIONS:
            raise ValueError(f"must be one of {', '.join(PRECISIONS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.base is not None and self.model is not None:
            raise ValueError("give either base (an .anc to fine-tune) or model (to pretrain), not both")
        if self.base is None and self.model is None:
            raise ValueError("give base (an .anc to fine-tune) or model ({builder, config}, to pretrain)")
        if self.max_steps is None and self.max_epochs is None:
            raise ValueError("give max_steps or max_epochs")
        if self.method == "freeze" and self.freeze is None:
            raise ValueError("method freeze needs a freeze section ({freeze: [globs]} or {train: [globs]})")
        if self.method == "full" and self.base_dtype != "fp32":
            raise ValueError(f"base_dtype {self.base_dtype}: method full trains every weight, so "
                             "there is no frozen base to hold in another dtype")
        if self.strategy == "fsdp" and self.base_dtype != "fp32":
            raise ValueError(f"base_dtype {self.base_dtype} with strategy fsdp: FSDP2 shards modules "
                             "whose parameters share one dtype; use strategy ddp, or base_dtype fp32")
        if self.rollout > 1 and self.data.dataset is None:
            raise ValueError("rollout: multi-step training needs an anemoi base and data.dataset")
        return self

    # --- derived -------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """sha256 of the canonical JSON of the validated config (key order and spelling of the
        YAML do not matter; defaults are included, so a changed default changes the digest)."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

    @property
    def run_name(self) -> str:
        if self.output.name:
            return self.output.name
        return "pretrain" if self.model is not None else f"finetune-{self.method}"


# --- loading -----------------------------------------------------------------------------------
def error_line(exc: ValidationError) -> str:
    """The first problem of a pydantic ValidationError as one line naming its key."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"unknown key {loc!r}"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:
        return msg
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or err["type"] == "missing" else f" (got {got!r:.60})"
    return f"{loc}: {msg}{shown}"


def parse_set(items: list[str] | tuple[str, ...]) -> list[tuple[list[str], Any]]:
    """``key.sub=value`` strings -> (path, YAML scalar) pairs."""
    import yaml

    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        path = key.strip().split(".")
        if not sep or not all(path):
            raise ConfigError(None, f"--set {item!r}: expected key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(None, f"--set {item!r}: the value is not YAML ({one_line(str(e))[:120]})") from None
        out.append((path, value))
    return out


def apply_set(data: dict[str, Any], overrides: list[tuple[list[str], Any]]) -> dict[str, Any]:
    for path, value in overrides:
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(None, f"--set {'.'.join(path)}: {'.'.join(path[:i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = (),
                data: dict[str, Any] | None = None) -> TrainConfig:
    """Read the YAML at ``path`` (or take ``data``), apply ``--set`` overrides and validate.
    A relative ``base`` or ``data.dataset`` path is resolved against the config file's folder."""
    import yaml

    file = os.fspath(path) if path is not None else None
    if data is None:
        if file is None:
            raise ConfigError(None, "no configuration given")
        try:
            with open(file, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
        except OSError as e:
            raise ConfigError(file, f"cannot read ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise ConfigError(file, f"not valid YAML ({one_line(str(e))[:160]})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(file, f"the configuration must be a mapping, not {type(data).__name__}")
    data = apply_set(json.loads(json.dumps(data, default=str)), parse_set(overrides))
    try:
        cfg = TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(file, error_line(e)) from None
    cfg.base = _near(cfg.base, file)
    if isinstance(cfg.data.dataset, str):
        cfg.data.dataset = _near(cfg.data.dataset, file)
    return cfg


def _near(path: str | None, config_file: str | None) -> str | None:
    """A relative path that does not exist from here, but does from the config file's folder."""
    if path and config_file and "://" not in path and not os.path.isabs(path) and not os.path.exists(path):
        near = os.path.join(os.path.dirname(os.path.abspath(config_file)), path)
        if os.path.exists(near):
            return near
    return path
