"""Exception hierarchy of :mod:`pol.crypto`: a part of the one error tree of :mod:`pol.errors`.

Every error raised on purpose by this package derives from :class:`CryptoError` (a
:class:`pol.errors.PolError`), so callers (and the CLI) can catch one type, and each concrete class
is on exactly one branch of the tree: :class:`pol.errors.UnusableInputError` (``exit_code`` 2: the
input is unusable: missing/corrupt file, wrong key, bad arguments) or
:class:`pol.errors.VerificationError` (``exit_code`` 1: the input was checked and it is *invalid*:
bad signature, tampered data). ``VerificationError`` is the one of :mod:`pol.errors` (re-exported
here). The family bases :class:`CryptoError`, :class:`SealError` and :class:`LedgerError` hold
members of both branches, so they are on neither (``exit_code`` 2 if raised directly; this package
raises only their concrete subclasses).
"""

from __future__ import annotations

from pol.errors import PolError, UnusableInputError, VerificationError

__all__ = [
    "CryptoError",
    "VerificationError",
    # keys
    "KeyFileError",
    "KeyFileExists",
    "KeyFileNotFound",
    "BadKeyFile",
    "WrongKeyType",
    "PassphraseError",
    "WrongPassphrase",
    "PassphraseRequired",
    # archive
    "ArchiveError",
    "UnsafeEntryError",
    "ArchiveLimitError",
    "ArchiveTruncated",
    "ArchiveTrailingData",
    "ArchiveFormatError",
    "ArchiveCorrupt",
    "DestinationError",
    "DestinationExists",
    # seal
    "SealError",
    "SealUnreadable",
    "InvalidProofError",
    "NotSealedError",
    "UnsupportedVersion",
    "MalformedSeal",
    "TruncatedSeal",
    "WrongRecipient",
    "BadSignature",
    "SignerMismatch",
    "TamperedCiphertext",
    "SealedContentError",
    "RootDigestMismatch",
    "ReplayedSeal",
    "RevokedSeal",
    # hpke
    "HPKEError",
    # ledger
    "LedgerError",
    "LedgerUnusable",
    "LedgerInvalid",
]


class CryptoError(PolError):
    """Base class of every deliberate error of :mod:`pol.crypto` (on neither branch: see above)."""

    exit_code: int = 2


# --------------------------------------------------------------------- keys
class KeyFileError(CryptoError, UnusableInputError):
    """A key file cannot be used (the brief's ``KeyError``; renamed so it does not shadow the builtin)."""


class KeyFileExists(KeyFileError):
    """Refusing to overwrite existing key files without ``force``."""


class KeyFileNotFound(KeyFileError):
    """The key file does not exist or cannot be read."""


class BadKeyFile(KeyFileError):
    """The file is not a PEM key this package understands."""


class WrongKeyType(KeyFileError):
    """The PEM holds a key of another algorithm or visibility (e.g. X25519 where Ed25519 was expected)."""


class PassphraseError(KeyFileError):
    """Base for passphrase problems."""


class WrongPassphrase(PassphraseError):
    """The passphrase does not decrypt the private key."""


class PassphraseRequired(PassphraseError):
    """The private key is encrypted and no passphrase was given (or one was given for a plain key)."""


# ------------------------------------------------------------------ archive
class ArchiveError(CryptoError, UnusableInputError):
    """Packing or unpacking a proof archive failed."""


class UnsafeEntryError(ArchiveError):
    """An entry name is unsafe: traversal, absolute, bad characters, duplicate, too deep, or a non-regular file."""


class ArchiveLimitError(ArchiveError):
    """An entry or the whole archive exceeds a configured limit."""


class ArchiveTruncated(ArchiveError):
    """The stream ended before the archive's end record."""


class ArchiveTrailingData(ArchiveError):
    """Bytes follow the archive's end record."""


class ArchiveFormatError(ArchiveError):
    """The stream is not a pol archive or a record is malformed."""


class ArchiveCorrupt(ArchiveError):
    """An entry's content does not match its recorded digest."""


class DestinationError(ArchiveError):
    """The output location is unusable (exists already, parent missing, not writable)."""


class DestinationExists(DestinationError):
    """The output path already exists."""


# --------------------------------------------------------------------- seal
class SealError(CryptoError):
    """Sealing or opening a sealed proof failed (family base: see the subclasses)."""


class SealUnreadable(SealError, UnusableInputError):
    """The sealed file cannot be read (missing, a directory, no permission)."""


class InvalidProofError(SealError, UnusableInputError):
    """The directory to seal is not a usable proof (no manifest/root digest)."""


class NotSealedError(SealError, UnusableInputError):
    """The file does not start with the sealed-proof magic."""


class UnsupportedVersion(SealError, UnusableInputError):
    """The sealed file uses a format version this code does not know."""


class MalformedSeal(SealError, UnusableInputError):
    """The sealed file's header cannot be parsed or is not canonical."""


class TruncatedSeal(SealError, UnusableInputError):
    """The sealed file ends early (missing chunks or a cut header)."""


class WrongRecipient(SealError, UnusableInputError):
    """The sealed file is encrypted to another key than the one given."""


class BadSignature(SealError, VerificationError):
    """The prover's signature over the header does not verify."""

    exit_code = 1


class SignerMismatch(BadSignature):
    """The signature is valid but made by another key than the expected signer."""


class TamperedCiphertext(SealError, VerificationError):
    """A ciphertext chunk failed authentication, or chunks were reordered/dropped/appended."""

    exit_code = 1


class SealedContentError(SealError, VerificationError):
    """The decrypted (authentic) payload is not a valid, safe proof archive."""

    exit_code = 1


class RootDigestMismatch(SealError, VerificationError):
    """The root digest in the signed header differs from the unpacked manifest's."""

    exit_code = 1


# --------------------------------------------------------------------- hpke
class HPKEError(CryptoError, UnusableInputError):
    """HPKE encapsulation/decryption failed (wrong key, bad ``enc``, or modified ciphertext)."""


class ReplayedSeal(SealError, VerificationError):
    """The sealed file is not the latest publication of its proof on the ledger (an old or
    unpublished sealed proof replayed)."""

    exit_code = 1


class RevokedSeal(SealError, VerificationError):
    """The ledger records that the signer revoked this proof."""

    exit_code = 1


# ------------------------------------------------------------------- ledger
class LedgerError(CryptoError):
    """A ledger problem (family base: :class:`LedgerUnusable` or :class:`LedgerInvalid`)."""


class LedgerUnusable(LedgerError, UnusableInputError):
    """The ledger file cannot be used (missing, not a ledger, bad arguments)."""


class LedgerInvalid(LedgerError, VerificationError):
    """Ledger verification found problems."""

    exit_code = 1
