"""The byte format of ``.anc`` (docs/format.md), the bottom layer: zip members written and read,
safetensors sections, digests, the manifest/metadata/lineage schemas, atomic writes, memory maps and
ranged reads of remote files. It imports nothing of the package above it but ``anemoi_ckpt.errors``;
the reading and writing API (``anemoi_ckpt.reader``, ``anemoi_ckpt.writer``) stands on it.
"""
