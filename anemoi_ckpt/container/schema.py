"""The typed JSON documents inside an ``.anc``: manifest, metadata and lineage.

These pydantic models are the single source of the JSON Schemas published in docs/schemas/.
Every model allows extra keys, so a reader accepts files written by a later minor version
(which may add fields) and keeps what it does not understand.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FORMAT_NAME = "anemoi-ckpt"
FORMAT_VERSION = "1.1"
SCHEMA_VERSION = "1.0"

Kind = Literal["training", "inference", "adapter", "delta"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Producer(_Open):
    name: str = Field(description="Tool that wrote the file.")
    version: str = Field(description="Its version.")


class TensorTable(_Open):
    """Index of a safetensors section, so a reader can check and address tensors by name."""

    count: int = Field(description="Number of stored tensors (aliases excluded).")
    header_digest: str = Field(description="sha256 of the member's first 8+N bytes (length prefix, "
                                           "JSON header and its padding).")
    digests: dict[str, str] = Field(description="Stored tensor name -> sha256 hex of its bytes.")
    aliases: dict[str, str] = Field(default_factory=dict,
                                    description="Alias name -> stored tensor name it shares storage with.")


class Section(_Open):
    path: str = Field(description="Member path relative to the root folder.")
    role: str = Field(description="What the member holds; see docs/format.md, 'Section roles'.")
    name: str | None = Field(default=None, description="Name of a tensor section (weights, graph...).")
    required: bool = Field(description="A reader that does not know `role` must refuse the file "
                                       "when true and may ignore the section when false.")
    size: int = Field(ge=0, description="Member size in bytes.")
    digest: str = Field(description="'sha256:<hex>': sha256 of the member bytes, or for safetensors "
                                    "members the section digest of docs/format.md.")
    media_type: str = Field(description="application/vnd.safetensors, application/json, "
                                        "application/x-numpy-raw or application/msgpack.")
    tensors: TensorTable | None = None


class Manifest(_Open):
    format: Literal["anemoi-ckpt"] = FORMAT_NAME
    format_version: str = Field(pattern=r"^\d+\.\d+$", description="major.minor of the container.")
    uuid: str = Field(description="This file's identity; new for every file written.")
    kind: Kind
    content_id: str = Field(description="Hash of the logical weights (see docs/format.md); "
                                        "independent of metadata, uuid and tensor order.")
    created: str = Field(description="ISO 8601 UTC time of writing.")
    producer: Producer
    sections: list[Section]


class ModelSpec(_Open):
    builder: str = Field(description="Id of a model builder from the allow-list or the entry "
                                     "point group anemoi_ckpt.model_builders. Never imported by name.")
    config: dict[str, Any] = Field(default_factory=dict)


class Metadata(_Open):
    schema_version: str = SCHEMA_VERSION
    model: ModelSpec | None = None
    tensor_roles: dict[str, str] = Field(default_factory=dict,
                                         description="Glob over tensor names -> role (e.g. "
                                                     "'*.running_mean': 'buffer').")
    description: str | None = None
    user: dict[str, Any] = Field(default_factory=dict, description="Free-form, user-owned.")


class ParentRef(_Open):
    uuid: str
    content_id: str | None = None
    role: str | None = Field(default=None, description="e.g. base, adapter, source.")


class Tool(_Open):
    name: str
    version: str


class LineageRecord(_Open):
    uuid: str
    kind: Kind
    content_id: str
    operation: str = Field(description="create, translate, convert, merge, split, train, fine-tune, ...")
    parameters: dict[str, Any] = Field(default_factory=dict)
    parents: list[ParentRef] = Field(default_factory=list)
    created: str
    tool: Tool
    code_versions: dict[str, str] = Field(default_factory=dict)
    dataset: str | None = None
    run_id: str | None = None
    config_digest: str | None = None


class Lineage(_Open):
    schema_version: str = SCHEMA_VERSION
    records: list[LineageRecord] = Field(description="records[0] describes this file; the rest are "
                                                     "its ancestors, each uuid once.")

    def depth(self) -> int:
        """Length of the longest parent chain from this file (0 for a file with no parents)."""
        by_uuid = {r.uuid: r for r in self.records}
        memo: dict[str, int] = {}

        def walk(uuid: str, seen: frozenset[str]) -> int:
            if uuid in memo:
                return memo[uuid]
            rec = by_uuid.get(uuid)
            if rec is None or uuid in seen:
                return 0
            d = max((1 + walk(p.uuid, seen | {uuid}) for p in rec.parents), default=0)
            memo[uuid] = d
            return d

        return walk(self.records[0].uuid, frozenset()) if self.records else 0


SCHEMAS: dict[str, type[BaseModel]] = {"manifest": Manifest, "metadata": Metadata, "lineage": Lineage}
