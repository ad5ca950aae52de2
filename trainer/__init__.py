"""anemoi_ckpt.trainer: the bundled Lightning trainer (LoRA, freeze and full fine-tuning from an ``.anc``).

This folder is the package ``anemoi_ckpt.trainer`` (pyproject maps it with ``package-dir``), an
optional part installed with the ``trainer`` extra. Importing the package itself pulls in neither
Lightning nor PEFT; its submodules do.
"""
