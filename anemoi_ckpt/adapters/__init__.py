"""LoRA adapters and freeze deltas: reading them from ``.anc`` files (:mod:`.model`), their
maths, merging them into a base and splitting fine-tunes into adapters."""

from .model import ATTACHED_PREFIX, Adapter, open_adapters, read_adapters

__all__ = ["ATTACHED_PREFIX", "Adapter", "open_adapters", "read_adapters"]

# PEFT interop and attached adapters: fit checks, export to a PEFT folder, attach/detach/list
from .attach import attach, detach, list_adapters  # noqa: E402
from .compat import Problem, check_adapter  # noqa: E402
from .export import export_peft  # noqa: E402

__all__ += ["Problem", "attach", "check_adapter", "detach", "export_peft", "list_adapters"]

# split: fine-tune minus base as a LoRA adapter or a freeze delta
from .split import SplitReport, split, split_attached  # noqa: E402

__all__ += ["SplitReport", "split", "split_attached"]

# merge: LoRA adapters and freeze deltas folded into a base
from .merge import MergeReport, merge  # noqa: E402
from ..lineage.signers import TrustPolicy  # noqa: E402 - merge(..., require_signed=TrustPolicy(...))

__all__ += ["MergeReport", "TrustPolicy", "merge"]

# writing what a fine-tune produced: an adapter (LoRA) or delta (freeze) file
from .write import adapter_tensors, changed_tensors, peft_config_json, write_finetune  # noqa: E402

__all__ += ["adapter_tensors", "changed_tensors", "peft_config_json", "write_finetune"]
