"""The typed JSON documents inside an ``.anc``: manifest, metadata and lineage.

These pydantic models are the single source of the JSON Schemas published in docs/schemas/.
Every model allows extra keys, so a reader accepts files written by a later minor version
(which may add fields) and keeps what it does not understand.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FORMAT_NAME = "anemoi-ckpt"
FORMAT_VERSION = "1.2"
SCHEMA_VERSION = "1.0"

#: ``sha256:`` and 64 lowercase hex digits: a member or section digest, a content id.
TAGGED_SHA256 = r"^sha256:[0-9a-f]{64}$"
#: 64 lowercase hex digits: a header or tensor digest.
HEX_SHA256 = r"^[0-9a-f]{64}$"
#: JSON members nested deeper than this many arrays and objects are refused (docs/format.md 4.2):
#: a number every implementation can check, and far from where Python's own parser gives up.
MAX_JSON_DEPTH = 512


def json_depth(obj: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of a decoded JSON value (a scalar 0, ``[]`` or ``{}`` 1, ``[[1]]`` 2),
    computed iteratively; stops counting once ``limit`` is exceeded (returns ``limit + 1``)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        depth += 1
        if depth > limit:
            return limit + 1
        deepest = max(deepest, depth)
        stack.extend((c, depth) for c in children if isinstance(c, (dict, list)))
    return deepest

Kind = Literal["training", "inference", "adapter", "delta"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


def _require_in_schema(*keys: str) -> Any:
    """A ``json_schema_extra`` hook listing ``keys`` as required in the published schema.

    The keys keep a default for code that builds the model, but every file must carry them: the
    reader checks their presence on the raw JSON (``reader.Checkpoint._open``), so the published
    schema, docs/format.md 4.1 and the reader agree."""
    def hook(schema: dict[str, Any]) -> None:
        required = schema.setdefault("required", [])
        required.extend(k for k in keys if k not in required)
        for k in keys:
            schema.get("properties", {}).get(k, {}).pop("default", None)
    return hook


class Producer(_Open):
    name: str = Field(description="Tool that wrote the file.")
    version: str = Field(description="Its version.")


class TensorTable(_Open):
    """Index of a safetensors section, so a reader can check and address tensors by name."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_require_in_schema("aliases"))

    count: int = Field(ge=0, description="Number of stored tensors (aliases excluded).")
    header_digest: str = Field(pattern=HEX_SHA256,
                               description="sha256 of the member's first 8+N bytes (length prefix, "
                                           "JSON header and its padding).")
    digests: dict[str, Annotated[str, Field(pattern=HEX_SHA256)]] = Field(
        description="Stored tensor name -> sha256 hex of its bytes, in payload order.")
    aliases: dict[str, str] = Field(default_factory=dict,
                                    description="Alias name -> stored tensor name it shares storage with "
                                                "(required; {} when there is none).")


class Encoding(_Open):
    """How a compressed tensor section (format 1.2) stores its tensors: the frame index
    (docs/format.md, "Compressed tensor sections (1.2)")."""

    model_config = ConfigDict(extra="allow", strict=True)

    codec: str = Field(description="'zstd'.")
    transform: str = Field(description="'byte-planes': floating-point chunks are stored as byte "
                                       "planes before compression.")
    level: int | None = Field(default=None, description="The zstd level the writer used "
                                                        "(informational; decoding does not need it).")
    chunk_size: int = Field(description="Logical bytes per frame (the last frame of a tensor may "
                                        "hold fewer); a multiple of 8.")
    size: int = Field(description="Logical member size: the same section uncompressed.")
    frames: list[int] = Field(description="Stored size of every frame, in payload order; each "
                                          "tensor has ceil(nbytes / chunk_size) frames.")


class Section(_Open):
    path: str = Field(description="Member path relative to the root folder.")
    role: str = Field(description="What the member holds; see docs/format.md, 'Section roles'.")
    name: str | None = Field(default=None, description="Name of a tensor section (weights, graph...).")
    required: bool = Field(description="A reader that does not know `role` must refuse the file "
                                       "when true and may ignore the section when false.")
    size: int = Field(ge=0, description="Member size in bytes.")
    digest: str = Field(pattern=TAGGED_SHA256,
                        description="'sha256:<hex>': sha256 of the member bytes, or for safetensors "
                                    "members the section digest of docs/format.md.")
    media_type: str = Field(description="application/vnd.safetensors, application/json, "
                                        "application/x-numpy-raw or application/octet-stream; "
                                        "informative (the role decides).")
    tensors: TensorTable | None = None
    encoding: Encoding | None = Field(default=None, description="Compressed tensor sections only "
                                      "(format 1.2): the frame index. `size` is then the stored size.")


class Manifest(_Open):
    model_config = ConfigDict(extra="allow", json_schema_extra=_require_in_schema("format"))

    format: Literal["anemoi-ckpt"] = Field(default=FORMAT_NAME, description="Always 'anemoi-ckpt' "
                                           "(required in a file).")
    format_version: str = Field(pattern=r"^\d+\.\d+$", description="major.minor of the container.")
    uuid: str = Field(description="This file's identity; new for every file written.")
    kind: Kind
    content_id: str = Field(pattern=TAGGED_SHA256,
                            description="Hash of the logical weights (see docs/format.md); "
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


class SignatureRef(_Open):
    """A parent's signature as it was verified when the child was written (merge --require-signed)."""

    signer: str = Field(description="Who signed: the key fingerprint 'sha256:<hex>', the certificate "
                                    "subject, or the Sigstore identity.")
    method: str = Field(description="How: 'key', 'certificate' or 'sigstore'.")
    form: str = Field(description="'embedded' (a signature member) or 'detached' (FILE.sig).")
    digest: str = Field(pattern=TAGGED_SHA256, description="'sha256:<hex>' of the signature bundle bytes.")


class ParentRef(_Open):
    uuid: str
    content_id: str | None = None
    role: str | None = Field(default=None, description="e.g. base, adapter, source.")
    signature: SignatureRef | None = Field(
        default=None, description="The parent's verified signature, when the writer required one "
                                  "(merge --require-signed); null otherwise.")


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
        """Length of the longest parent chain from this file (0 for a file with no parents).

        Iterative (a lineage of 100,000 records must not hit the recursion limit); a parent link
        that closes a cycle, or names a uuid without a record, counts as the end of its chain."""
        if not self.records:
            return 0
        by_uuid: dict[str, LineageRecord] = {}
        for r in self.records:
            by_uuid.setdefault(r.uuid, r)
        memo: dict[str, int] = {}
        on_stack: set[str] = set()
        root = self.records[0].uuid
        stack: list[tuple[str, int]] = [(root, 0)]  # (uuid, index of the next parent to visit)
        on_stack.add(root)
        while stack:
            uuid, i = stack[-1]
            parents = by_uuid[uuid].parents
            if i < len(parents):
                stack[-1] = (uuid, i + 1)
                p = parents[i].uuid
                if p in by_uuid and p not in memo and p not in on_stack:
                    on_stack.add(p)
                    stack.append((p, 0))
                continue
            # A parent without a record, or on the stack (a cycle), ends its chain: 1 + 0.
            memo[uuid] = max((1 + memo.get(p.uuid, 0) for p in parents), default=0)
            on_stack.discard(uuid)
            stack.pop()
        return memo[root]


SCHEMAS: dict[str, type[BaseModel]] = {"manifest": Manifest, "metadata": Metadata, "lineage": Lineage}
