"""Write the JSON Schemas of the manifest, metadata and lineage models (docs/schemas/).

``python -m anemoi_ckpt.schema_export docs/schemas``; a test checks the committed files match.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .container.schema import FORMAT_VERSION, SCHEMAS


def schema_documents() -> dict[str, str]:
    out = {}
    for name, model in SCHEMAS.items():
        doc = model.model_json_schema()
        doc = {"$schema": "https://json-schema.org/draft/2020-12/schema",
               "$id": f"https://anemoi-ckpt/schemas/{FORMAT_VERSION}/{name}.schema.json", **doc}
        out[f"{name}.schema.json"] = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    return out


def main(argv: list[str] | None = None) -> None:
    folder = Path((argv or sys.argv[1:] or ["docs/schemas"])[0])
    folder.mkdir(parents=True, exist_ok=True)
    for fname, text in schema_documents().items():
        (folder / fname).write_text(text, encoding="utf-8")
        print(folder / fname)


if __name__ == "__main__":
    main()
