"""Comparing two checkpoints: ``diff`` (``anemoi_ckpt.diff``, ``anemoi-ckpt diff``) section by section
and tensor by tensor, with the per-tensor statistics in :mod:`.stats`."""
