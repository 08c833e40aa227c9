"""Fixed-width encodings shared by the sealed-file header and the ledger: timestamps, hex fields.

Canonical JSON and the strict JSON parser are :func:`pol.util.canonical_json` and
:func:`pol.util.loads_strict` (one definition for all of pol).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

__all__ = ["utc_timestamp", "parse_utc_timestamp", "HEX64", "HEX32"]

HEX64 = re.compile(r"[0-9a-f]{64}")
HEX32 = re.compile(r"[0-9a-f]{32}")
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_TS_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


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
