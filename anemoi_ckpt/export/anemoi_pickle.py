"""An anemoi-inference checkpoint (``inference-*.ckpt``) for sites without the ``anc`` runner.

THIS WRITES A PICKLE. The model is built from the ``.anc`` by the installed anemoi-models
(:func:`anemoi_ckpt.anemoi.load_model`, nothing unpickled), then saved as anemoi-training 0.17.1's
checkpoint callback saves it: ``config``, ``metadata`` and ``supporting_arrays`` detached from the
model, ``torch.save(model)``, then the metadata and arrays added to the zip with anemoi-utils'
``save_metadata``. anemoi-inference's default runner ``torch.load``s it like any such file.

``torch.save`` names the zip's root folder after the file, and ``save_metadata`` appends under it,
so the file is written under its real name inside a hidden folder beside the target, then renamed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from ..errors import AncError

_INSTALL = "install anemoi-ckpt[anemoi] (anemoi-models, anemoi-utils)"


def _save_metadata() -> Any:
    try:
        from anemoi.utils.checkpoints import save_metadata
    except ImportError:
        raise AncError(None, "--format anemoi-ckpt needs anemoi-utils", _INSTALL) from None
    return save_metadata


def write(src: str, target: str) -> None:
    """Build the model of ``src`` and write the pickled inference checkpoint ``target``."""
    import torch

    from ..anemoi import load_model

    save_metadata = _save_metadata()
    model = load_model(src)
    metadata, arrays = model.metadata, model.supporting_arrays
    # as anemoi-training: these travel in the zip's anemoi.json and .numpy members, not the pickle
    model.config = model.metadata = model.supporting_arrays = None
    folder = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp",
                              dir=os.path.dirname(target))
    try:
        tmp = os.path.join(folder, os.path.basename(target))
        torch.save(model, tmp)
        save_metadata(tmp, dict(metadata), supporting_arrays=dict(arrays or {}))
        os.replace(tmp, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
