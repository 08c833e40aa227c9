"""Exceptions. The CLI maps them to exit codes: a proof that fails a check is *invalid* (exit 1),
input that cannot be read or understood is *unusable* (exit 2)."""


class PolError(Exception):
    """Base class of every error pol raises on purpose."""


class ProofFormatError(PolError):
    """The proof (or data given with it) is unusable: missing, corrupt, wrong version or shape."""


class IncompleteProofError(ProofFormatError):
    """The directory holds a proof whose writing did not finish (crash, kill, full disk)."""


class ProofWriteError(PolError):
    """Writing the proof failed; training must stop rather than continue unrecorded."""


class ConfigError(PolError):
    """A user-supplied setting is wrong (unknown task, bad hyperparameter, missing dataset)."""


class UntrustedFactoryError(ProofFormatError):
    """A proof names code (a `module:callable` factory) that the verifier was not told to trust."""


class IntegrityError(PolError):
    """The proof is readable but does not match its own commitments (a digest differs): tampering
    or corruption that kept sizes. Reported as an invalid proof (exit 1)."""
