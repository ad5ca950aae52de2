"""Fine-tuning real anemoi models (an ``AnemoiModelInterface`` built from an ``.anc``) with the
bundled trainer: anemoi-training's forecast objective, its data and its wiring.

Importing this package imports nothing from anemoi; the modules that need anemoi-models import it
when called.
"""
