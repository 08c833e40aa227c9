"""The one error tree of pol (floor 0: imports nothing of pol).

Every error pol raises on purpose is a `PolError`, and every `PolError` carries the exit code
that the CLI returns for it in the class attribute `exit_code`. Two branches, disjoint:

- `UnusableInputError` (exit 2): input that cannot be read or understood, a wrong setting, a
  limit, a missing or wrong key, a file that cannot be written. Nothing was decided about the
  proof.
- `VerificationError` (exit 1): the input was read and checked, and it is *invalid*: a digest
  that differs, a bad signature, tampered ciphertext, a ledger that does not verify.

`ProofWriteError` (writing a proof failed) is on the unusable side (exit 2), like every failure
that is not a verdict. The classes of `pol.crypto.errors` are subclasses of one branch each (their
family bases `CryptoError`, `SealError`, `LedgerError` hold members of both branches and are on
neither; they keep `exit_code = 2` for code that raises them directly). The CLI maps any
`PolError` to `exit_code`; a new error only has to pick its branch.
"""

from __future__ import annotations

__all__ = [
    "PolError",
    "UnusableInputError",
    "VerificationError",
    "ProofFormatError",
    "IncompleteProofError",
    "UntrustedFactoryError",
    "LimitExceeded",
    "LIMIT_OPTIONS",
    "ConfigError",
    "ProofWriteError",
    "IntegrityError",
    "EXIT_INVALID",
    "EXIT_UNUSABLE",
]

EXIT_INVALID = 1
EXIT_UNUSABLE = 2


class PolError(Exception):
    """Base class of every error pol raises on purpose. `exit_code` is what the CLI exits with."""

    exit_code: int = EXIT_UNUSABLE

    def within(self, where: str) -> PolError:
        """This same error (same class, same exit code), its message prefixed by where the input
        came from: `raise e.within("--ledger x.db") from None` names the option that gave the
        input without converting the error into another class."""
        message = str(self)
        self.args = (f"{where}: {message}" if message else where,)
        return self


# ------------------------------------------------------------------ unusable input (exit 2)
class UnusableInputError(PolError):
    """The input cannot be used: nothing was decided about the proof (exit 2)."""

    exit_code = EXIT_UNUSABLE


class ProofFormatError(UnusableInputError):
    """The proof (or data given with it) is unusable: missing, corrupt, wrong version or shape."""


class IncompleteProofError(ProofFormatError):
    """The directory holds a proof whose writing did not finish (crash, kill, full disk)."""


class UntrustedFactoryError(ProofFormatError):
    """A proof names code (a `module:callable` factory) that the verifier was not told to trust."""


# How each budget limit is raised from the command line (`pol verify`); the library takes
# `Limits(field=...)` for every field.
LIMIT_OPTIONS = {
    "max_checkpoints": "pol verify --max-checkpoints N",
    "max_checkpoint_bytes": "pol verify --max-checkpoint-gb X",
    "max_replay_steps": "pol verify --max-replay-steps N",
    "max_dataset_bytes": "pol verify --max-dataset-gb X",
    "max_total_bytes": "pol verify --max-proof-gb X",
    "max_file_bytes": "pol verify --max-proof-gb X",
}


def _gib(n: int) -> str:
    return f"{n / 2**30:g} GiB" if n >= 2**30 else f"{n / 2**20:g} MiB"


class LimitExceeded(ProofFormatError):
    """A proof asks for more work or memory than one of the verifier's limits allows. Unusable
    input (exit 2), refused before the work starts; the message names the `Limits` field and how
    to raise it."""

    def __init__(self, what: str, field: str, limit: int) -> None:
        self.field = field
        self.limit = limit
        shown = _gib(limit) if field.endswith("_bytes") else f"{limit:,}"
        how = LIMIT_OPTIONS.get(field)
        raise_it = (f"raise it with `{how}` (library: Limits({field}=...))" if how else
                    f"raise it with Limits({field}=...)")
        super().__init__(f"{what}: over the verifier's limit {field} = {shown}; if you trust "
                         f"this proof's size, {raise_it}")

    def __reduce__(self):  # picklable across worker processes despite the 3-argument __init__
        return (_limit_exceeded, (type(self), str(self), self.field, self.limit))


def _limit_exceeded(cls: type, message: str, field: str, limit: int) -> LimitExceeded:
    e = cls.__new__(cls)
    Exception.__init__(e, message)
    e.field, e.limit = field, limit
    return e


class ConfigError(UnusableInputError):
    """A user-supplied setting is wrong (unknown task, bad hyperparameter, missing dataset)."""


class ProofWriteError(UnusableInputError):
    """Writing the proof failed; training must stop rather than continue unrecorded."""


# ------------------------------------------------------------------ invalid (exit 1)
class VerificationError(PolError):
    """The input was read and checked, and it is invalid: an integrity or authenticity check
    failed (exit 1)."""

    exit_code = EXIT_INVALID


class IntegrityError(VerificationError):
    """The proof is readable but does not match its own commitments (a digest differs): tampering
    or corruption that kept sizes. Reported as an invalid proof (exit 1)."""
