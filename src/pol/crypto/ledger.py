"""Append-only, hash-chained, signed log of protocol events in one SQLite file.

Each entry commits to its predecessor (``prev_hash``) and is signed by the
party that appended it, so:

* editing an entry changes its hash (``hash_mismatch``) or, if the attacker
  recomputes the hash and re-signs with their own key, the *next* entry's
  ``prev_hash`` no longer matches (``chain_break``);
* deleting an entry leaves a seq gap (``missing``) and a chain break;
* reordering breaks seq/hash binding and the timestamp order;
* dropping the tail is only visible against a remembered head
  (:meth:`Ledger.export_head`, passed back as ``anchors`` to :meth:`Ledger.verify`)
  -- keep heads somewhere the ledger's owner cannot rewrite.

Concurrency: WAL mode plus ``BEGIN IMMEDIATE`` makes appends from several
processes serialise on SQLite's write lock; each append is one transaction,
so a crash leaves either the whole entry or none of it.

Timestamps come from a :class:`TimestampAuthority`; :class:`LocalClock` is the
default.  An RFC 3161 TSA or a transparency log can implement the same
protocol later: ``attest`` returns an opaque token stored next to the entry
(outside the hash, because it is computed *over* the hash) and ``check``
validates it during :meth:`Ledger.verify`.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Union, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pol.util import canonical_json, loads_strict

from ._canon import HEX64, parse_utc_timestamp, utc_timestamp
from .errors import LedgerInvalid, LedgerUnusable
from .keys import key_id, raw_public_bytes

__all__ = [
    "GENESIS_HASH",
    "TimestampAuthority",
    "LocalClock",
    "Entry",
    "LedgerProblem",
    "LedgerReport",
    "Ledger",
    "compute_entry_hash",
]

GENESIS_HASH = "0" * 64
HASH_CONTEXT = b"pol-ledger/v1 entry\x00"
SIG_CONTEXT = b"pol-ledger/v1 signature\x00"
FORMAT_NAME = "pol-ledger"
FORMAT_VERSION = "1"
KIND_PATTERN = re.compile(r"[a-z][a-z0-9_.-]{0,63}")

PathLike = Union[str, "os.PathLike[str]"]

_COLUMNS = (
    "seq, kind, payload, timestamp, signer_key_id, signer_public_key, prev_hash, entry_hash, signature, "
    "ts_authority, ts_token"
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    seq               INTEGER PRIMARY KEY,
    kind              TEXT NOT NULL,
    payload           TEXT NOT NULL,
    timestamp         TEXT NOT NULL,
    signer_key_id     TEXT NOT NULL,
    signer_public_key TEXT NOT NULL,
    prev_hash         TEXT NOT NULL,
    entry_hash        TEXT NOT NULL,
    signature         TEXT NOT NULL,
    ts_authority      TEXT NOT NULL,
    ts_token          BLOB
);
CREATE INDEX IF NOT EXISTS entries_kind ON entries(kind);
CREATE INDEX IF NOT EXISTS entries_hash ON entries(entry_hash);
"""


# ------------------------------------------------------- timestamp authority
@runtime_checkable
class TimestampAuthority(Protocol):
    """Source of entry timestamps, optionally with verifiable evidence.

    ``now`` gives the time written into the entry (and hashed).  ``attest``
    may return a token over the entry hash (e.g. an RFC 3161 TimeStampResp
    or a transparency-log inclusion promise); it is stored beside the entry.
    ``check`` returns ``None`` if the token is acceptable for that entry,
    else a one-line problem description.
    """

    name: str

    def now(self) -> datetime: ...

    def attest(self, entry_hash: bytes, timestamp: str) -> bytes | None: ...

    def check(self, entry_hash: bytes, timestamp: str, token: bytes | None) -> str | None: ...


class LocalClock:
    """The machine's UTC clock; no evidence.  Trust equals trust in whoever appends."""

    name = "local-clock"

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def attest(self, entry_hash: bytes, timestamp: str) -> bytes | None:
        return None

    def check(self, entry_hash: bytes, timestamp: str, token: bytes | None) -> str | None:
        return None if token is None else "unexpected timestamp token for the local clock"


# ------------------------------------------------------------------ entries
def compute_entry_hash(
    seq: int, kind: str, payload_json: str, timestamp: str, signer_public_key: str, prev_hash: str
) -> bytes:
    """SHA-256 over a domain tag and the canonical JSON array of the hashed fields."""
    body = canonical_json([seq, kind, payload_json, timestamp, signer_public_key, prev_hash])
    return hashlib.sha256(HASH_CONTEXT + body).digest()


@dataclass(frozen=True)
class Entry:
    """One ledger entry as stored."""

    seq: int
    kind: str
    payload_json: str
    timestamp: str
    signer_key_id: str
    signer_public_key: str  # raw Ed25519 key, hex
    prev_hash: str
    entry_hash: str
    signature: str
    ts_authority: str = "local-clock"
    ts_token: bytes | None = field(default=None, repr=False)

    @property
    def payload(self) -> dict[str, Any]:
        """The parsed payload; ValueError if the stored text is not JSON (a damaged ledger)."""
        if not isinstance(self.payload_json, str):
            raise ValueError(f"payload is stored as {type(self.payload_json).__name__}, not text")
        return loads_strict(self.payload_json.encode("utf-8"), "ledger payload", max_bytes=None, error=ValueError)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (payload parsed, token hex)."""
        return {
            "seq": self.seq,
            "kind": self.kind,
            "payload": self.payload,
            "timestamp": self.timestamp,
            "signer_key_id": self.signer_key_id,
            "signer_public_key": self.signer_public_key,
            "prev_hash": self.prev_hash,
            "entry_hash": self.entry_hash,
            "signature": self.signature,
            "ts_authority": self.ts_authority,
            "ts_token": self.ts_token.hex() if self.ts_token is not None else None,
        }


@dataclass(frozen=True)
class LedgerProblem:
    """One finding of :meth:`Ledger.verify`; ``related_seq`` names the other entry involved, if any."""

    seq: int
    code: str
    message: str
    related_seq: int | None = None

    def __str__(self) -> str:
        return f"seq {self.seq}: {self.code}: {self.message}"


@dataclass
class LedgerReport:
    """Result of :meth:`Ledger.verify`."""

    entries: int
    head: tuple[int, str]
    problems: list[LedgerProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def seqs(self, code: str | None = None) -> set[int]:
        """Seqs named by problems (both ``seq`` and ``related_seq``), optionally of one code."""
        out: set[int] = set()
        for p in self.problems:
            if code is None or p.code == code:
                out.add(p.seq)
                if p.related_seq is not None:
                    out.add(p.related_seq)
        return out

    def codes(self) -> set[str]:
        return {p.code for p in self.problems}

    def summary(self) -> str:
        if self.ok:
            return f"ok: {self.entries} entries, head seq {self.head[0]} {self.head[1]}"
        return f"INVALID: {len(self.problems)} problem(s) in {self.entries} entries"


# ------------------------------------------------------------------- ledger
class Ledger:
    """An append-only signed log in one SQLite file (see module docstring)."""

    def __init__(
        self,
        path: PathLike,
        *,
        create: bool = True,
        timestamp_authority: TimestampAuthority | None = None,
        timeout: float = 60.0,
        synchronous: str = "FULL",
    ) -> None:
        """Open (and with ``create``, initialise) the ledger at ``path``.

        ``synchronous="FULL"`` fsyncs every append (durable); ``"NORMAL"`` keeps
        crash-consistency but may lose the last appends on power loss.
        """
        self.path = Path(path)
        self.tsa: TimestampAuthority = timestamp_authority if timestamp_authority is not None else LocalClock()
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be FULL, NORMAL or EXTRA")
        if not create and not self.path.is_file():
            raise LedgerUnusable(f"ledger not found: {self.path}")
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise LedgerUnusable(f"cannot open ledger {self.path}: {exc}") from exc
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            # never convert or extend somebody else's database: look before touching anything
            if self._tables():
                self._check_format()
            elif not create:
                raise LedgerUnusable(f"{self.path} is not a pol ledger (empty database)")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # pragma: no cover - e.g. read-only media
                raise LedgerUnusable(f"cannot switch {self.path} to WAL mode (got {mode})")
            self._conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            if create:
                with self._write_txn():
                    if not self._tables():  # re-checked under the write lock: another process may have won
                        for stmt in _SCHEMA.strip().split(";"):
                            if stmt.strip():
                                self._conn.execute(stmt)
                        self._conn.execute(
                            "INSERT INTO meta(key, value) VALUES ('format', ?), ('version', ?)",
                            (FORMAT_NAME, FORMAT_VERSION),
                        )
            self._check_format()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise LedgerUnusable(f"{self.path} is not a usable ledger database: {exc}") from exc
        except BaseException:
            self._conn.close()
            raise

    # -- plumbing
    def _tables(self) -> set[str]:
        return {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _check_format(self) -> None:
        try:
            rows = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError as exc:
            raise LedgerUnusable(f"{self.path} is not a pol ledger (no meta table)") from exc
        if rows.get("format") != FORMAT_NAME:
            raise LedgerUnusable(f"{self.path} is not a pol ledger")
        if rows.get("version") != FORMAT_VERSION:
            raise LedgerUnusable(f"unsupported ledger version {rows.get('version')!r}")
        # a pol ledger whose entries table is gone or lacks columns lost its entries: tampering or
        # damage, reported as an invalid ledger (exit 1), never as a database error
        have = {r[1] for r in self._conn.execute("PRAGMA table_info(entries)").fetchall()}
        want = {c.strip() for c in _COLUMNS.split(",")}
        if not have:
            raise LedgerInvalid(f"{self.path}: the ledger's entries table is missing (dropped: "
                                "every entry is gone)")
        if not want <= have:
            raise LedgerInvalid(f"{self.path}: the ledger's entries table lacks column(s) "
                                f"{', '.join(sorted(want - have))} (altered)")

    @contextmanager
    def _write_txn(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")

    @contextmanager
    def _read_txn(self) -> Iterator[None]:
        self._conn.execute("BEGIN")
        try:
            yield
        finally:
            self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing
    def append(self, kind: str, payload: dict[str, Any], signing_key: Ed25519PrivateKey) -> Entry:
        """Append one signed entry; safe against concurrent appenders in other processes."""
        if not isinstance(kind, str) or KIND_PATTERN.fullmatch(kind) is None:
            raise LedgerUnusable(f"invalid entry kind {kind!r} (lowercase [a-z0-9_.-], max 64)")
        if not isinstance(payload, dict):
            raise LedgerUnusable("payload must be a dict")
        if not isinstance(signing_key, Ed25519PrivateKey):
            raise TypeError("signing_key must be an Ed25519PrivateKey")
        try:
            payload_json = canonical_json(payload).decode("utf-8")
        except ValueError as exc:
            raise LedgerUnusable(f"payload is not canonical-JSON serialisable: {exc}") from exc
        pub = signing_key.public_key()
        pub_hex = raw_public_bytes(pub).hex()
        kid = key_id(pub)
        with self._write_txn():
            row = self._conn.execute(
                "SELECT seq, entry_hash, timestamp FROM entries ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            seq = int(row[0]) + 1 if row else 1
            prev = str(row[1]) if row else GENESIS_HASH
            ts = utc_timestamp(self.tsa.now())
            if row and isinstance(row[2], str) and ts < row[2]:
                ts = row[2]  # clock went backwards: keep the ledger's time non-decreasing
            digest = compute_entry_hash(seq, kind, payload_json, ts, pub_hex, prev)
            signature = signing_key.sign(SIG_CONTEXT + digest).hex()
            token = self.tsa.attest(digest, ts)
            entry = Entry(
                seq=seq,
                kind=kind,
                payload_json=payload_json,
                timestamp=ts,
                signer_key_id=kid,
                signer_public_key=pub_hex,
                prev_hash=prev,
                entry_hash=digest.hex(),
                signature=signature,
                ts_authority=self.tsa.name,
                ts_token=token,
            )
            self._conn.execute(
                f"INSERT INTO entries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.seq,
                    entry.kind,
                    entry.payload_json,
                    entry.timestamp,
                    entry.signer_key_id,
                    entry.signer_public_key,
                    entry.prev_hash,
                    entry.entry_hash,
                    entry.signature,
                    entry.ts_authority,
                    entry.ts_token,
                ),
            )
        return entry

    # -- reading
    @staticmethod
    def _entry(row: tuple[Any, ...]) -> Entry:
        return Entry(
            seq=row[0],
            kind=row[1],
            payload_json=row[2],
            timestamp=row[3],
            signer_key_id=row[4],
            signer_public_key=row[5],
            prev_hash=row[6],
            entry_hash=row[7],
            signature=row[8],
            ts_authority=row[9],
            ts_token=row[10],
        )

    def entries(self, kind: str | None = None) -> Iterator[Entry]:
        """Entries in seq order (optionally of one kind), streamed in batches. Not verified."""
        if kind is None:
            cur = self._conn.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY seq")
        else:
            cur = self._conn.execute(f"SELECT {_COLUMNS} FROM entries WHERE kind = ? ORDER BY seq", (kind,))
        while True:
            rows = cur.fetchmany(1000)
            if not rows:
                return
            for row in rows:
                yield self._entry(row)

    def get(self, seq: int) -> Entry | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM entries WHERE seq = ?", (seq,)).fetchone()
        return self._entry(row) if row else None

    def find(self, kind: str, **payload_fields: Any) -> list[Entry]:
        """Entries of ``kind`` whose payload has every given field with exactly that (JSON) value."""
        wanted = {k: canonical_json(v) for k, v in payload_fields.items()}
        out = []
        for e in self.entries(kind):
            try:
                p = e.payload
            except ValueError:
                continue
            if all(k in p and canonical_json(p[k]) == v for k, v in wanted.items()):
                out.append(e)
        return out

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def export_head(self) -> tuple[int, str]:
        """``(seq, entry_hash)`` of the last entry, or ``(0, GENESIS_HASH)``; remember it to detect truncation."""
        row = self._conn.execute("SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)

    # -- verification
    def verify(
        self,
        *,
        anchors: Iterable[tuple[int, str]] = (),
        trusted_keys: Iterable[Ed25519PublicKey | str] | None = None,
    ) -> LedgerReport:
        """Check every entry, the chain, seq continuity and time order.

        ``anchors``: previously exported heads ``(seq, entry_hash)``; each must
        still be present with the same hash (detects truncation/rewrites).
        ``trusted_keys``: if given, entries signed by other keys are reported.
        """
        anchor_map: dict[int, str] = {}
        for a_seq, a_hash in anchors:
            anchor_map[int(a_seq)] = str(a_hash)
        trusted: set[str] | None = None
        if trusted_keys is not None:
            trusted = {k if isinstance(k, str) else raw_public_bytes(k).hex() for k in trusted_keys}
        problems: list[LedgerProblem] = []
        key_cache: dict[str, Ed25519PublicKey | None] = {}
        count = 0
        expected_seq = 1
        prev_seq = 0
        prev_hash: str | None = GENESIS_HASH
        prev_ts: str | None = None
        head = (0, GENESIS_HASH)
        anchors_seen: set[int] = set()

        with self._read_txn():
            cur = self._conn.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY seq")
            while True:
                rows = cur.fetchmany(1000)
                if not rows:
                    break
                for row in rows:
                    count += 1
                    seq = row[0]
                    found = self._check_row(row, expected_seq, prev_seq, prev_hash, prev_ts, trusted, key_cache)
                    problems.extend(found)
                    h = row[7] if isinstance(row[7], str) else None
                    if seq in anchor_map:
                        anchors_seen.add(seq)
                        if h != anchor_map[seq]:
                            problems.append(
                                LedgerProblem(seq, "anchor_mismatch", "entry hash differs from a remembered head")
                            )
                    ts = row[3]
                    if isinstance(ts, str) and (prev_ts is None or ts >= prev_ts):
                        prev_ts = ts
                    prev_hash = h
                    prev_seq = seq
                    expected_seq = seq + 1
                    head = (seq, h or "")
        for a_seq in sorted(set(anchor_map) - anchors_seen):
            if a_seq > head[0]:
                problems.append(
                    LedgerProblem(
                        a_seq, "truncated", f"ledger ends at seq {head[0]} but a remembered head has seq {a_seq}"
                    )
                )
            elif a_seq > 0:
                problems.append(LedgerProblem(a_seq, "anchor_missing", "a remembered head entry is gone"))
        return LedgerReport(entries=count, head=head, problems=problems)

    def _lookup_seq_by_hash(self, h: str) -> int | None:
        row = self._conn.execute("SELECT seq FROM entries WHERE entry_hash = ? LIMIT 1", (h,)).fetchone()
        return int(row[0]) if row else None

    def _check_row(
        self,
        row: tuple[Any, ...],
        expected_seq: int,
        prev_seq: int,
        prev_hash: str | None,
        prev_ts: str | None,
        trusted: set[str] | None,
        key_cache: dict[str, Ed25519PublicKey | None],
    ) -> list[LedgerProblem]:
        # long: one row of an untrusted ledger, every field validated in order; splitting scatters the checks
        seq, kind, payload, ts, kid, pub, prev, h, sig, tsa_name, token = row
        out: list[LedgerProblem] = []
        if seq != expected_seq:
            if seq > expected_seq:
                missing = f"entry {expected_seq}" if seq == expected_seq + 1 else f"entries {expected_seq}..{seq - 1}"
                out.append(LedgerProblem(expected_seq, "missing", f"{missing} missing (deleted?)", related_seq=seq))
            else:
                out.append(LedgerProblem(seq, "seq_order", f"unexpected seq {seq} (expected {expected_seq})"))
        if not all(isinstance(x, str) for x in (kind, payload, ts, kid, pub, prev, h, sig)):
            out.append(LedgerProblem(seq, "malformed", "a field has the wrong type"))
            return out
        if HEX64.fullmatch(h) is None or HEX64.fullmatch(prev) is None:
            out.append(LedgerProblem(seq, "malformed", "entry_hash/prev_hash is not 64 lowercase hex"))
            return out

        recomputed = compute_entry_hash(seq, kind, payload, ts, pub, prev).hex()
        if recomputed != h:
            out.append(LedgerProblem(seq, "hash_mismatch", "entry content does not match its entry_hash (modified)"))
        try:
            parsed = loads_strict(payload.encode("utf-8"), "ledger payload", max_bytes=None, error=ValueError)
            canonical_ok = canonical_json(parsed).decode("utf-8") == payload
        except (ValueError, UnicodeError):
            canonical_ok = False
        if not canonical_ok:
            out.append(LedgerProblem(seq, "malformed", "payload is not canonical JSON"))

        if pub not in key_cache:
            try:
                raw = bytes.fromhex(pub)
                key_cache[pub] = Ed25519PublicKey.from_public_bytes(raw) if len(raw) == 32 else None
            except ValueError:
                key_cache[pub] = None
        vk = key_cache[pub]
        if vk is None:
            out.append(LedgerProblem(seq, "malformed", "signer public key is not a raw Ed25519 key"))
        else:
            if key_id(vk) != kid:
                out.append(LedgerProblem(seq, "key_id_mismatch", "signer_key_id does not match signer_public_key"))
            try:
                vk.verify(bytes.fromhex(sig), SIG_CONTEXT + bytes.fromhex(h))
            except (InvalidSignature, ValueError):
                out.append(
                    LedgerProblem(seq, "bad_signature", f"signature does not verify with the recorded key {kid}")
                )
            if trusted is not None and pub not in trusted:
                out.append(LedgerProblem(seq, "untrusted_signer", f"signed by {kid}, not a trusted key"))

        if prev != prev_hash:
            if seq == 1 and prev_seq == 0:
                msg = "prev_hash of the first entry is not the genesis hash"
                related = None
            else:
                other = self._lookup_seq_by_hash(prev)
                related = prev_seq
                msg = f"prev_hash does not match entry {prev_seq}'s hash"
                if other is not None and other != prev_seq:
                    msg += f"; it is entry {other}'s hash (entries reordered)"
                elif seq != expected_seq:
                    msg += " (entries before this one are missing)"
                else:
                    msg += f" (entry {prev_seq} was modified/re-signed, or this entry was altered)"
            out.append(LedgerProblem(seq, "chain_break", msg, related_seq=related))

        try:
            parse_utc_timestamp(ts)
        except ValueError:
            out.append(LedgerProblem(seq, "malformed", f"timestamp {ts!r} is not UTC ISO-8601 with microseconds"))
        else:
            if prev_ts is not None and ts < prev_ts:
                out.append(
                    LedgerProblem(
                        seq, "timestamp_order", f"timestamp {ts} is earlier than a previous entry's {prev_ts}",
                        related_seq=prev_seq,
                    )
                )
        if tsa_name == self.tsa.name:
            msg = self.tsa.check(bytes.fromhex(h), ts, token if token is None else bytes(token))
            if msg:
                out.append(LedgerProblem(seq, "timestamp_token", msg))
        else:
            out.append(
                LedgerProblem(seq, "timestamp_token", f"entry timestamped by {tsa_name!r}, verifier uses {self.tsa.name!r}")
            )
        return out
