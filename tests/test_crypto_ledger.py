"""Append-only signed hash-chained ledger (pol.crypto.ledger): integrity, tampering, concurrency."""

from __future__ import annotations

import hashlib
import hmac
import multiprocessing as mp
import os
import signal
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pol.crypto.errors import LedgerError
from pol.crypto.keys import key_id
from pol.crypto.ledger import (
    GENESIS_HASH,
    SIG_CONTEXT,
    Ledger,
    LocalClock,
    TimestampAuthority,
    compute_entry_hash,
)


@pytest.fixture(scope="module")
def prover():
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def mallory():
    return Ed25519PrivateKey.generate()


def fill(path, key, n: int = 10) -> Ledger:
    led = Ledger(path, synchronous="NORMAL")
    for i in range(n):
        led.append("commitment" if i % 2 == 0 else "proof", {"i": i, "root_digest": f"{i:064x}"}, key)
    return led


_RAW: list[sqlite3.Connection] = []


def raw(path) -> sqlite3.Connection:
    """A plain SQLite connection, as an attacker with write access to the file would use."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    _RAW.append(conn)
    return conn


@pytest.fixture(autouse=True)
def _close_raw_connections():
    yield
    while _RAW:
        _RAW.pop().close()


def resign(conn: sqlite3.Connection, seq: int, key: Ed25519PrivateKey, **changes) -> None:
    """What an attacker with write access but without the prover's key can do to one row."""
    row = conn.execute(
        "SELECT seq, kind, payload, timestamp, signer_public_key, prev_hash FROM entries WHERE seq = ?", (seq,)
    ).fetchone()
    fields = dict(zip(["seq", "kind", "payload", "timestamp", "signer_public_key", "prev_hash"], row))
    fields.update(changes)
    pub = key.public_key()
    fields["signer_public_key"] = pub.public_bytes_raw().hex()
    h = compute_entry_hash(
        fields["seq"], fields["kind"], fields["payload"], fields["timestamp"], fields["signer_public_key"],
        fields["prev_hash"],
    )
    conn.execute(
        "UPDATE entries SET kind=?, payload=?, timestamp=?, signer_public_key=?, signer_key_id=?, prev_hash=?, "
        "entry_hash=?, signature=? WHERE seq=?",
        (
            fields["kind"], fields["payload"], fields["timestamp"], fields["signer_public_key"], key_id(pub),
            fields["prev_hash"], h.hex(), key.sign(SIG_CONTEXT + h).hex(), seq,
        ),
    )


# ------------------------------------------------------------------ basics
def test_thousand_appends_verify(tmp_path, prover):
    led = fill(tmp_path / "l.db", prover, 1000)
    report = led.verify()
    assert report.ok, report.problems[:5]
    assert report.entries == 1000
    assert report.head == led.export_head()
    assert report.head[0] == 1000
    entries = list(led.entries())
    assert [e.seq for e in entries] == list(range(1, 1001))
    assert entries[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.entry_hash for a, b in zip(entries, entries[1:]))
    assert all(a.timestamp <= b.timestamp for a, b in zip(entries, entries[1:]))
    assert len(led) == 1000
    assert len(list(led.entries("proof"))) == 500
    led.close()


def test_entry_fields_and_find(tmp_path, prover):
    with Ledger(tmp_path / "l.db") as led:
        e = led.append("verdict", {"z": 1, "a": [1, 2, {"b": "é"}], "ok": True}, prover)
        assert e.payload_json == '{"a":[1,2,{"b":"é"}],"ok":true,"z":1}'
        assert e.payload == {"z": 1, "a": [1, 2, {"b": "é"}], "ok": True}
        assert e.signer_key_id == key_id(prover.public_key())
        assert len(e.entry_hash) == 64 and len(e.signature) == 128
        assert e.timestamp.endswith("Z") and len(e.timestamp) == len("2025-01-01T00:00:00.000000Z")
        led.append("proof", {"root_digest": "aa", "n": 1}, prover)
        led.append("proof", {"root_digest": "bb", "n": True}, prover)
        assert [x.seq for x in led.find("proof", root_digest="aa")] == [2]
        assert [x.seq for x in led.find("proof", n=1)] == [2]  # 1 and true are different JSON values
        assert led.find("proof", root_digest="cc") == []
        assert led.find("verdict", ok=True)[0].seq == 1
        assert led.get(2).payload["root_digest"] == "aa" and led.get(99) is None
        assert led.export_head() == (3, led.get(3).entry_hash)
        d = led.get(1).to_dict()
        assert d["payload"]["z"] == 1 and d["ts_token"] is None


def test_rejects_bad_input(tmp_path, prover):
    with Ledger(tmp_path / "l.db") as led:
        for kind in ("", "Proof", "has space", "x" * 65):
            with pytest.raises(LedgerError):
                led.append(kind, {}, prover)
        for payload in ({"s": {1, 2}}, {"f": float("nan")}, {1: "int key"}, ["not", "a", "dict"]):
            with pytest.raises(LedgerError):
                led.append("proof", payload, prover)  # type: ignore[arg-type]
        assert len(led) == 0
        assert led.export_head() == (0, GENESIS_HASH)
        assert led.verify().ok


def test_open_errors(tmp_path):
    with pytest.raises(LedgerError):
        Ledger(tmp_path / "missing.db", create=False)
    (tmp_path / "junk.db").write_bytes(os.urandom(4096))
    with pytest.raises(LedgerError):
        Ledger(tmp_path / "junk.db")
    c = raw(tmp_path / "other.db")
    c.execute("CREATE TABLE t(x)")
    c.close()
    with pytest.raises(LedgerError):
        Ledger(tmp_path / "other.db", create=False)
    with pytest.raises(LedgerError):  # never adds its tables to somebody else's database
        Ledger(tmp_path / "other.db")
    c = raw(tmp_path / "other.db")
    assert [r[0] for r in c.execute("SELECT name FROM sqlite_master")] == ["t"]
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    c.close()
    raw(tmp_path / "empty.db").close()
    with pytest.raises(LedgerError):
        Ledger(tmp_path / "empty.db", create=False)


# ----------------------------------------------------------------- tampering
def test_edited_payload(tmp_path, prover):
    fill(tmp_path / "l.db", prover).close()
    raw(tmp_path / "l.db").execute("UPDATE entries SET payload = '{\"i\":4,\"root_digest\":\"x\"}' WHERE seq = 5")
    report = Ledger(tmp_path / "l.db", create=False).verify()
    assert not report.ok
    assert report.seqs("hash_mismatch") == {5}
    assert report.seqs() == {5}


def test_deleted_row(tmp_path, prover):
    fill(tmp_path / "l.db", prover).close()
    raw(tmp_path / "l.db").execute("DELETE FROM entries WHERE seq = 7")
    report = Ledger(tmp_path / "l.db", create=False).verify()
    missing = [p for p in report.problems if p.code == "missing"]
    assert [p.seq for p in missing] == [7]
    assert "chain_break" in report.codes()
    assert "hash_mismatch" not in report.codes()


def test_swapped_rows(tmp_path, prover):
    fill(tmp_path / "l.db", prover).close()
    c = raw(tmp_path / "l.db")
    cols = "kind, payload, timestamp, signer_key_id, signer_public_key, prev_hash, entry_hash, signature"
    r3 = c.execute(f"SELECT {cols} FROM entries WHERE seq = 3").fetchone()
    r4 = c.execute(f"SELECT {cols} FROM entries WHERE seq = 4").fetchone()
    sets = ", ".join(f"{x.strip()} = ?" for x in cols.split(","))
    c.execute("BEGIN")
    c.execute(f"UPDATE entries SET {sets} WHERE seq = 3", r4)
    c.execute(f"UPDATE entries SET {sets} WHERE seq = 4", r3)
    c.execute("COMMIT")
    report = Ledger(tmp_path / "l.db", create=False).verify()
    assert report.seqs("hash_mismatch") == {3, 4}
    assert {3, 4} <= report.seqs("chain_break")
    assert report.seqs() <= {2, 3, 4, 5}
    assert any("reordered" in p.message for p in report.problems)


def test_swapped_rows_rehashed_and_resigned(tmp_path, prover, mallory):
    """Reordering by an attacker who recomputes hashes and signs: chain and time order still break."""
    led = fill(tmp_path / "l.db", prover)
    e3, e4 = led.get(3), led.get(4)
    led.close()
    c = raw(tmp_path / "l.db")
    resign(c, 3, mallory, kind=e4.kind, payload=e4.payload_json, timestamp=e4.timestamp)
    resign(c, 4, mallory, kind=e3.kind, payload=e3.payload_json, timestamp=e3.timestamp)
    report = Ledger(tmp_path / "l.db", create=False).verify()
    assert "hash_mismatch" not in report.codes() and "bad_signature" not in report.codes()
    assert report.seqs("timestamp_order") >= {4}
    assert report.seqs("chain_break") & {3, 4, 5}


def test_row_resigned_with_another_key(tmp_path, prover, mallory):
    fill(tmp_path / "l.db", prover).close()
    resign(raw(tmp_path / "l.db"), 6, mallory, payload='{"i":5,"root_digest":"forged"}')
    led = Ledger(tmp_path / "l.db", create=False)
    report = led.verify()
    # entry 6 is self-consistent (hash and Mallory's signature match) ...
    assert "hash_mismatch" not in report.codes() and "bad_signature" not in report.codes()
    # ... but entry 7 no longer points at it, and the problem names entry 6
    breaks = [p for p in report.problems if p.code == "chain_break"]
    assert len(breaks) == 1 and breaks[0].seq == 7 and breaks[0].related_seq == 6
    assert "entry 6" in breaks[0].message
    # pinning the allowed signers names entry 6 directly
    pinned = led.verify(trusted_keys=[prover.public_key()])
    assert pinned.seqs("untrusted_signer") == {6}


def test_resigned_but_recorded_key_kept(tmp_path, prover, mallory):
    fill(tmp_path / "l.db", prover).close()
    c = raw(tmp_path / "l.db")
    resign(c, 4, mallory, payload='{"i":3,"root_digest":"forged"}')
    # attacker puts the prover's key back in the row to look legitimate
    pub = prover.public_key().public_bytes_raw().hex()
    c.execute("UPDATE entries SET signer_public_key = ?, signer_key_id = ? WHERE seq = 4", (pub, key_id(prover.public_key())))
    report = Ledger(tmp_path / "l.db", create=False).verify()
    assert 4 in report.seqs("bad_signature")
    assert 4 in report.seqs("hash_mismatch")  # the hash covered Mallory's key


def test_resigning_the_head_needs_an_anchor(tmp_path, prover, mallory):
    led = fill(tmp_path / "l.db", prover)
    anchor = led.export_head()
    led.close()
    resign(raw(tmp_path / "l.db"), 10, mallory, payload='{"i":9,"root_digest":"forged"}')
    led = Ledger(tmp_path / "l.db", create=False)
    assert led.verify().ok  # undetectable from the ledger alone ...
    report = led.verify(anchors=[anchor])  # ... but not against a remembered head
    assert report.seqs("anchor_mismatch") == {10}


def test_truncated_tail_detected_with_anchor(tmp_path, prover):
    led = fill(tmp_path / "l.db", prover, 12)
    anchor = led.export_head()
    led.close()
    raw(tmp_path / "l.db").execute("DELETE FROM entries WHERE seq > 9")
    led = Ledger(tmp_path / "l.db", create=False)
    assert led.verify().ok
    report = led.verify(anchors=[anchor])
    assert [(p.seq, p.code) for p in report.problems] == [(12, "truncated")]


def test_timestamp_moved_back(tmp_path, prover):
    led = fill(tmp_path / "l.db", prover)
    early = led.get(1).timestamp
    led.close()
    raw(tmp_path / "l.db").execute("UPDATE entries SET timestamp = ? WHERE seq = 8", (early,))
    report = Ledger(tmp_path / "l.db", create=False).verify()
    assert report.seqs("hash_mismatch") == {8}
    assert 8 in report.seqs("timestamp_order")


def test_garbage_row_types(tmp_path, prover):
    fill(tmp_path / "l.db", prover).close()
    raw(tmp_path / "l.db").execute("UPDATE entries SET payload = x'00ff' WHERE seq = 2")
    report = Ledger(tmp_path / "l.db", create=False).verify()
    assert 2 in report.seqs("malformed")


# --------------------------------------------------------- timestamp authority
class SteppingClock(LocalClock):
    """A clock that jumps backwards every other call."""

    name = "local-clock"

    def __init__(self) -> None:
        self.t = datetime(2030, 1, 1, tzinfo=timezone.utc)
        self.n = 0

    def now(self) -> datetime:
        self.n += 1
        self.t += timedelta(seconds=-5 if self.n % 2 == 0 else 10)
        return self.t


class HmacTSA:
    """Toy authority with verifiable tokens, standing in for RFC 3161 / a transparency log."""

    name = "toy-tsa"

    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def attest(self, entry_hash: bytes, timestamp: str) -> bytes | None:
        return hmac.new(self.secret, entry_hash + timestamp.encode(), hashlib.sha256).digest()

    def check(self, entry_hash: bytes, timestamp: str, token: bytes | None) -> str | None:
        if token is None or not hmac.compare_digest(token, self.attest(entry_hash, timestamp)):
            return "timestamp token does not verify"
        return None


def test_timestamps_never_go_backwards(tmp_path, prover):
    with Ledger(tmp_path / "l.db", timestamp_authority=SteppingClock()) as led:
        for i in range(8):
            led.append("proof", {"i": i}, prover)
        ts = [e.timestamp for e in led.entries()]
        assert ts == sorted(ts)
        assert led.verify().ok


def test_timestamp_authority_protocol(tmp_path, prover):
    assert isinstance(LocalClock(), TimestampAuthority)
    tsa = HmacTSA(b"k")
    assert isinstance(tsa, TimestampAuthority)
    with Ledger(tmp_path / "l.db", timestamp_authority=tsa) as led:
        for i in range(3):
            led.append("proof", {"i": i}, prover)
        assert led.get(2).ts_token is not None and led.get(2).ts_authority == "toy-tsa"
        assert led.verify().ok
    raw(tmp_path / "l.db").execute("UPDATE entries SET ts_token = x'00' WHERE seq = 2")
    with Ledger(tmp_path / "l.db", timestamp_authority=tsa) as led:
        assert led.verify().seqs("timestamp_token") == {2}
    with Ledger(tmp_path / "l.db") as led:  # verifying with another authority is reported, not ignored
        assert led.verify().seqs("timestamp_token") == {1, 2, 3}


# --------------------------------------------------------------- concurrency
def _writer(path: str, key_bytes: bytes, worker: int, n: int) -> None:
    key = Ed25519PrivateKey.from_private_bytes(key_bytes)
    with Ledger(path, synchronous="NORMAL") as led:
        for i in range(n):
            led.append("commitment", {"worker": worker, "i": i}, key)


def _ctx():
    return mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")


def test_concurrent_appends_from_processes(tmp_path):
    path = str(tmp_path / "l.db")
    keys = [Ed25519PrivateKey.generate() for _ in range(4)]
    ctx = _ctx()
    procs = [
        ctx.Process(target=_writer, args=(path, k.private_bytes_raw(), w, 50)) for w, k in enumerate(keys)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with Ledger(path, create=False) as led:
        report = led.verify(trusted_keys=[k.public_key() for k in keys])
        assert report.ok, report.problems[:5]
        assert report.entries == 200
        got = sorted((e.payload["worker"], e.payload["i"]) for e in led.entries())
        assert got == sorted((w, i) for w in range(4) for i in range(50))
        for w, k in enumerate(keys):  # each worker's own entries are in its order
            mine = [e.payload["i"] for e in led.entries() if e.signer_key_id == key_id(k.public_key())]
            assert mine == list(range(50))


def _append_forever(path: str, key_bytes: bytes) -> None:
    key = Ed25519PrivateKey.from_private_bytes(key_bytes)
    with Ledger(path) as led:
        i = 0
        while True:
            led.append("proof", {"i": i, "pad": "x" * 200}, key)
            i += 1


def test_killed_writer_leaves_consistent_ledger(tmp_path):
    path = str(tmp_path / "l.db")
    key = Ed25519PrivateKey.generate()
    Ledger(path).close()
    proc = _ctx().Process(target=_append_forever, args=(path, key.private_bytes_raw()))
    proc.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.05)
        with Ledger(path, create=False) as led:
            if len(led) >= 50:
                break
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    with Ledger(path, create=False) as led:
        report = led.verify()
        assert report.ok, report.problems[:5]
        assert report.entries >= 50
        led.append("proof", {"after": "crash"}, key)
        assert led.verify().ok
