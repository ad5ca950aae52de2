"""Reading legacy pickled checkpoints without executing them (the translation layer's input side)."""
