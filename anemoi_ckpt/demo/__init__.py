"""``anemoi-ckpt demo``: the built-in demo data (:mod:`.data`), the end-to-end run over the container,
conversion and adapters (:mod:`.run`), the training story (:mod:`.train`) and the catalogue part
(:mod:`.catalogue`)."""
