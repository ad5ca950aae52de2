"""Built-in models that ``.anc`` files can name as builders (see :mod:`anemoi_ckpt.builders`)."""
