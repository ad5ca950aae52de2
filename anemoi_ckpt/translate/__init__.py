"""Declarative translation of old anemoi-models tensor layouts and metadata to the newest.

The steps are data (``translations/NNNN-name.toml`` in a checkout, ``anemoi_ckpt/_translations``
in a wheel); this package loads them (:mod:`.steps`), holds the operation kinds they may use
(:mod:`.ops`) and plans and applies them to tensor names (:mod:`.engine`). See
docs/translations.md.
"""

from .engine import TranslationInput, TranslationResult, applies, plan, translate
from .steps import Step, load_steps, parse_step, translations_dir

__all__ = ["Step", "TranslationInput", "TranslationResult", "applies", "load_steps", "parse_step",
           "plan", "translate", "translations_dir"]
