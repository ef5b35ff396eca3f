"""The JSON record at the head of an embeddings or index dir: read it and check what it claims to be."""
from __future__ import annotations

import json
from pathlib import Path


def read_record(file: Path, *, fmt: str, version: int, fields: tuple[str, ...], error: type[Exception],
                missing_hint: str, redo: str) -> dict:
    """Parse `file`; check format, schema version and required fields, each failure one line naming the file."""
    if not file.is_file():
        raise error(f"{file} not found: {missing_hint}")
    try:
        record = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{file} is not valid JSON ({e})") from None
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise error(f"{file}: format is {record.get('format') if isinstance(record, dict) else None!r}, "
                    f"expected {fmt!r}")
    if record.get("schema_version") != version:
        raise error(f"{file}: schema_version {record.get('schema_version')} is not supported (this sslforge reads "
                    f"{version}); {redo}")
    missing = [k for k in fields if k not in record]
    if missing:
        raise error(f"{file}: field {missing[0]!r} is missing; {redo}")
    return record
