"""Canonical encodings shared by the sealed-file header and the ledger.

Signatures and hashes must be computed over one exact byte string per value,
so every structured value that is hashed or signed goes through here.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from typing import Any

__all__ = ["canonical_json", "parse_json_strict", "utc_timestamp", "parse_utc_timestamp", "HEX64", "HEX32"]

HEX64 = re.compile(r"[0-9a-f]{64}")
HEX32 = re.compile(r"[0-9a-f]{32}")
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_TS_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


def _check(value: Any, path: str = "$") -> None:
    """Reject values whose JSON form is ambiguous or lossy (non-str keys, NaN, tuples...)."""
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: non-finite float is not allowed in canonical JSON")
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check(v, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{path}: object keys must be strings, got {type(k).__name__}")
            _check(v, f"{path}.{k}")
        return
    raise ValueError(f"{path}: {type(value).__name__} is not JSON-serialisable canonically")


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN/Infinity; rejects non-string keys."""
    _check(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate JSON key {k!r}")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def parse_json_strict(data: bytes) -> Any:
    """Parse UTF-8 JSON rejecting duplicate keys and NaN/Infinity."""
    return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def utc_timestamp(dt: datetime | None = None) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC; fixed width so string order equals time order."""
    dt = dt if dt is not None else datetime.now(timezone.utc)
    if dt.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    return dt.astimezone(timezone.utc).strftime(_TS_FORMAT)


def parse_utc_timestamp(text: str) -> datetime:
    """Inverse of :func:`utc_timestamp`; strict about the format."""
    if not isinstance(text, str) or _TS_RE.fullmatch(text) is None:
        raise ValueError(f"bad timestamp {text!r}")
    return datetime.strptime(text, _TS_FORMAT).replace(tzinfo=timezone.utc)
