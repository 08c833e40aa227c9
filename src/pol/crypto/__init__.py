"""Protocol cryptography for pol: party keys, sealed proofs, proof archives, signed ledger.

Import the submodules for the full API; the most used names are re-exported
here.  The click commands live in :mod:`pol.cli.protocol` (not imported here so
the library does not depend on click at import time).
"""

from __future__ import annotations

from .archive import pack, unpack, validate_name
from .errors import (
    ArchiveError,
    BadSignature,
    CryptoError,
    KeyFileError,
    LedgerError,
    RootDigestMismatch,
    SealError,
    SignerMismatch,
    TamperedCiphertext,
    TruncatedSeal,
    UnsupportedVersion,
    VerificationError,
    WrongRecipient,
)
from .keys import (
    generate_keys,
    key_id,
    load_encryption_key,
    load_encryption_pub,
    load_signing_key,
    load_verify_key,
)
from .ledger import Entry, Ledger, LedgerProblem, LedgerReport, LocalClock, TimestampAuthority
# The function ``seal`` is deliberately not re-exported: it would shadow the submodule
# ``pol.crypto.seal``.  Use ``from pol.crypto.seal import seal``.
from .seal import OpenedProof, SealHeader, SealResult, is_sealed, open_sealed, read_header
from .replay import CheckedProof, open_checked

__all__ = [
    "ArchiveError",
    "BadSignature",
    "CheckedProof",
    "CryptoError",
    "Entry",
    "KeyFileError",
    "Ledger",
    "LedgerError",
    "LedgerProblem",
    "LedgerReport",
    "LocalClock",
    "OpenedProof",
    "RootDigestMismatch",
    "SealError",
    "SealHeader",
    "SealResult",
    "SignerMismatch",
    "TamperedCiphertext",
    "TimestampAuthority",
    "TruncatedSeal",
    "UnsupportedVersion",
    "VerificationError",
    "WrongRecipient",
    "generate_keys",
    "is_sealed",
    "key_id",
    "load_encryption_key",
    "load_encryption_pub",
    "load_signing_key",
    "load_verify_key",
    "open_checked",
    "open_sealed",
    "pack",
    "read_header",
    "unpack",
    "validate_name",
]
