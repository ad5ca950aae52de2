"""The ``anc`` runner: anemoi-inference's forecaster, with the model built from an ``.anc``.

Registered under the entry point group ``anemoi.inference.runners`` (see ``pyproject.toml``), so
anemoi-inference finds it with no change of its own: a run configuration says ``runner: anc`` and
``checkpoint: model.anc``. Everything else (metadata, inputs, outputs, pre/post-processors, the
rollout) is anemoi-inference's, because ``Checkpoint`` already reads ``anemoi-metadata/anemoi.json``
from the ``.anc`` zip. Only ``Runner.model`` changes: ``torch.load(weights_only=False)`` of a pickle
becomes :func:`anemoi_ckpt.anemoi.load.load_model`, which never unpickles.

This module imports anemoi-inference at import time; it is loaded only by anemoi-inference's
registry, never by ``import anemoi_ckpt``.
"""

from __future__ import annotations

import logging
import os
import time
from functools import cached_property
from typing import Any

from anemoi.inference.runners.default import DefaultRunner

from ..errors import AncError
from ..convert.anc_source import is_anc
from .load import load_model

LOG = logging.getLogger(__name__)

__all__ = ["AncRunner"]


class AncRunner(DefaultRunner):
    """anemoi-inference's default forecaster whose model comes from an ``.anc`` (no pickle)."""

    @cached_property
    def model(self) -> Any:
        path = os.fspath(self.checkpoint.path)
        if not is_anc(path):
            # a pickled .ckpt would need torch.load(weights_only=False): refuse rather than fall back
            raise AncError(path, "runner 'anc' loads .anc files only and this is not one",
                           f"convert it first: anemoi-ckpt convert {path} model.anc")
        start = time.perf_counter()
        model = load_model(path, device=self.device)
        LOG.info("Built %s from %s without unpickling in %.2f s", type(model).__name__, path,
                 time.perf_counter() - start)
        # anemoi-inference's contract for the object it gets from Runner.model (runner.py)
        assert getattr(model, "runner", None) is None, model.runner
        model.runner = self
        return model
