"""Default LoRA targets: the attention and MLP linears of a model's processor, by processor type.

``lora.targets`` left out means these. The reference model has one layout
(:data:`~anemoi_ckpt.trainer.config.DEFAULT_LORA_TARGETS`, globs). An anemoi model's processor is one of
anemoi-models' processor classes, found by class name (no anemoi import: the trainer validates a
config without anemoi installed), wherever it sits - ``model.processor`` and, in a hierarchical
model, every ``model.{down,up}_level_processor.<level>`` - and each type names its own linears (module
names of anemoi-models 0.19, the layout every converted file is brought to).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

from .config import ConfigError

#: processor class -> globs, relative to the processor, of its attention and MLP linears
PROCESSOR_TARGETS: dict[str, tuple[str, ...]] = {
    # AIFS-single: multi-head self-attention (q, k, v, output projection) and a two-layer MLP
    "TransformerProcessor": ("proc.*.attention.lin_q", "proc.*.attention.lin_k",
                             "proc.*.attention.lin_v", "proc.*.attention.projection",
                             "proc.*.mlp.mlp.*"),
    # graph attention over the processor graph: query/key/value, the self (skip) linear, projection
    "GraphTransformerProcessor": ("proc.*.lin_query", "proc.*.lin_key", "proc.*.lin_value",
                                  "proc.*.lin_self", "proc.*.projection", "proc.*.node_dst_mlp.mlp.*"),
    # message passing: the node and edge MLPs of every block (a GNN has no attention)
    "GNNProcessor": ("proc.*.node_mlp.mlp.*", "proc.*.conv.edge_mlp.mlp.*"),
}


def is_anemoi_model(model: nn.Module) -> bool:
    """An anemoi-models ``AnemoiModelInterface`` (possibly PEFT-wrapped), by class name."""
    return any(type(m).__name__ == "AnemoiModelInterface" for m in model.modules())


def default_lora_targets(model: nn.Module) -> list[str] | None:
    """Full module names of the default targets of an anemoi ``model`` (``nn.Linear`` only, model
    order); None for another model (the reference model's globs, DEFAULT_LORA_TARGETS, apply)."""
    if not is_anemoi_model(model):
        return None
    modules = dict(model.named_modules())
    processors = [(n, type(m).__name__) for n, m in modules.items() if type(m).__name__.endswith("Processor")]
    if not processors:
        raise ConfigError(None, "lora.targets: the anemoi model has no processor to take default "
                          "targets from", "give lora.targets (globs of its Linear layers)")
    found: list[str] = []
    for pname, kind in processors:
        globs = PROCESSOR_TARGETS.get(kind)
        if globs is None:
            raise ConfigError(None, f"lora.targets: no default targets for the anemoi processor "
                              f"{kind} ({pname})", f"give lora.targets, e.g. {pname}.proc.*.<linear>")
        found += [n for n, m in modules.items() if isinstance(m, nn.Linear)
                  and any(fnmatchcase(n, f"{pname}.{g}") for g in globs)]
    if not found:
        raise ConfigError(None, "lora.targets: the default targets match no Linear layer of the model",
                          "give lora.targets")
    return found
