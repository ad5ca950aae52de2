"""The registry of section roles this version understands.

A role says how a member is encoded and whether it is mandatory. Later features (adapters,
training state) register their roles here; a reader that meets a role missing from its registry
refuses the file if the section is marked required, and warns and ignores it otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

SAFETENSORS = "application/vnd.safetensors"
JSON = "application/json"
NUMPY_RAW = "application/x-numpy-raw"
OCTET = "application/octet-stream"


@dataclass(frozen=True)
class Role:
    name: str
    media_type: str
    doc: str


ROLES: dict[str, Role] = {}


def register(role: Role) -> Role:
    ROLES[role.name] = role
    return role


register(Role("weights", SAFETENSORS, "Model parameters and persistent buffers. Always present."))
register(Role("tensors", SAFETENSORS, "Any other named tensor section (e.g. graph, optimizer)."))
register(Role("graph", SAFETENSORS, "Graph topology and edge attributes (non-persistent buffers)."))
register(Role("buffers", SAFETENSORS, "Non-persistent module buffers (named as named_buffers() gives)."))
register(Role("metadata", JSON, "Typed metadata (docs/schemas/metadata.schema.json). Always present."))
register(Role("lineage", JSON, "This file's lineage record and its ancestors'. Always present."))
register(Role("anemoi-metadata", JSON, "anemoi's metadata dict, verbatim, as anemoi-utils writes it."))
register(Role("document", JSON, "A named JSON document (training-state, hyper-parameters); tensors "
                                "it refers to are {\"__tensor__\": \"<section>/<name>\"}. Since 1.1."))
register(Role("supporting-array", NUMPY_RAW, "A raw numpy array listed in supporting_arrays_paths."))
register(Role("carried", OCTET, "A member of the source file kept byte for byte as carried/<n>.bin, its "
                                "path in the source (below the root folder) as the section's name: what "
                                "no converter step reads (unknown members, an older metadata document "
                                "that was translated)."))

#: Tensor sections with a dedicated role; any other tensor section gets role "tensors".
TENSOR_SECTION_ROLES = {"weights": "weights", "graph": "graph", "buffers": "buffers"}

#: The roles of tensor sections (they carry a ``tensors`` table; ``name`` gives the path).
TENSOR_ROLES = frozenset({"weights", "graph", "buffers", "tensors"})

#: Member paths (relative to the root folder) of the fixed sections.
MANIFEST_PATH = "manifest.json"
METADATA_PATH = "metadata.json"
LINEAGE_PATH = "lineage.json"
ANEMOI_FOLDER = "anemoi-metadata"
ANEMOI_JSON = "anemoi.json"


CARRIED_FOLDER = "carried"


def carried_path(index: int) -> str:
    """Numbered, not the source's path: anemoi-utils finds its metadata by base name anywhere in
    the zip, so a carried ``anemoi.json`` under its own name would make the file unreadable there."""
    return f"{CARRIED_FOLDER}/{index}.bin"


def tensor_section_path(name: str) -> str:
    return f"{name}.safetensors"


#: A compressed tensor section's suffix (format 1.2): not ``.safetensors``, since its payload is
#: zstd frames, and a different path makes a 1.1 reader refuse the file instead of misreading it.
COMPRESSED_SUFFIX = ".safetensors-zstd"


def compressed_section_path(name: str) -> str:
    return f"{name}{COMPRESSED_SUFFIX}"


def document_path(name: str) -> str:
    return f"documents/{name}.json"


def tensor_role(name: str) -> str:
    return TENSOR_SECTION_ROLES.get(name, "tensors")


def valid_section_name(name: str) -> bool:
    """Tensor section names become member names: keep them to a safe, portable alphabet."""
    return bool(name) and len(name) <= 64 and all(c.isalnum() or c in "-_" for c in name) \
        and name.isascii()


def role_of_path(path: str) -> str | None:
    """The role a member path implies, or None when the path alone does not decide it: the fixed
    JSON members, ``<name>.safetensors`` (a tensor section) and ``documents/<name>.json``."""
    fixed = {METADATA_PATH: "metadata", LINEAGE_PATH: "lineage", f"{ANEMOI_FOLDER}/{ANEMOI_JSON}":
             "anemoi-metadata"}
    if path in fixed:
        return fixed[path]
    if "/" not in path and path.endswith(".safetensors"):
        return tensor_role(path[:-len(".safetensors")])
    if "/" not in path and path.endswith(COMPRESSED_SUFFIX):
        return tensor_role(path[:-len(COMPRESSED_SUFFIX)])
    if path.startswith("documents/") and path.endswith(".json") and path.count("/") == 1:
        return "document"
    return None
