"""The torch numerics a step runs under, as the spec records them: `with numerics(spec, device):`.

Threads (the CPU's reduction order depends on the thread count), deterministic algorithms (with the
cuBLAS workspace they need on a GPU) and TF32 change a step's bits without changing its code. The
trainer, the verifier and its replay workers all enter `numerics` with the proof's spec, so they run
under the same settings, and leave the process as they found it: every setting changed is restored
on exit (the environment variable included).

What is set, from the spec:
- threads: `spec.cpu_threads`, where the proof was made on a CPU and the step runs on one (0: not
  recorded, left alone; an exact-mode proof, `spec.step.exact`, replays on any thread count);
- deterministic algorithms: switched on when `spec.deterministic` (never switched off: a caller
  that wants them on keeps them), with `CUBLAS_WORKSPACE_CONFIG` set when the process has none;
- TF32: `spec.tf32` ("" — a proof from before the field — leaves torch's settings alone).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

import torch
import torch.utils.deterministic as _det

from pol.errors import ConfigError
from pol.spec import TrainingSpec, set_tf32

__all__ = ["numerics", "CUBLAS_WORKSPACE", "check_recordable_numerics", "set_deterministic"]

CUBLAS_WORKSPACE = ":4096:8"  # what deterministic cuBLAS needs (torch's reproducibility notes)
_CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"


@contextlib.contextmanager
def numerics(spec: TrainingSpec, device: torch.device | str | None = None) -> Iterator[None]:
    """Run the body under the numerics `spec` records, on `device` (default: the spec's device);
    restore every setting changed on exit."""
    dev = torch.device(device if device is not None else spec.device)
    threads = (spec.cpu_threads if spec.device == "cpu" and dev.type == "cpu"
               and not spec.step.exact else 0)
    saved_threads = torch.get_num_threads()
    saved_det = torch.are_deterministic_algorithms_enabled()
    saved_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    saved_env = os.environ.get(_CUBLAS_ENV)
    saved_fill = _det.fill_uninitialized_memory
    prev_tf32 = set_tf32(spec.tf32)
    try:
        if threads and threads != saved_threads:
            torch.set_num_threads(threads)
        if spec.deterministic and not saved_det:  # replay as the prover trained: exact on a GPU
            if saved_env is None:
                os.environ[_CUBLAS_ENV] = CUBLAS_WORKSPACE
            set_deterministic(True)
        # Deterministic algorithms also fill every new tensor (NaN for floats), in case a
        # kernel reads memory it did not write; the step's kernels do not, and on a GPU the
        # fills are one kernel per allocation: ~570 per step of a 114M GPT in float32, ~1,300
        # in exact mode (H200 profiles), launched by a host that bounds the step
        if spec.deterministic:
            _det.fill_uninitialized_memory = False
        yield
    finally:
        _det.fill_uninitialized_memory = saved_fill
        if spec.tf32:
            set_tf32(prev_tf32)
        if torch.get_num_threads() != saved_threads:
            torch.set_num_threads(saved_threads)
        if (torch.are_deterministic_algorithms_enabled() != saved_det
                or torch.is_deterministic_algorithms_warn_only_enabled() != saved_warn):
            set_deterministic(saved_det, warn_only=saved_warn)
        if saved_env is None:
            os.environ.pop(_CUBLAS_ENV, None)
        else:
            os.environ[_CUBLAS_ENV] = saved_env


def set_deterministic(mode: bool, warn_only: bool = False) -> None:
    """`torch.use_deterministic_algorithms(mode, warn_only=...)` without loading the compiler
    stack: the public call imports `torch._inductor.config` (and with it `torch._dynamo`, about a
    second) only to set inductor's copy of the flag, which compiled code alone reads. Where that
    config is loaded already (or torch lacks the setter), the public call."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        setter(mode, warn_only=warn_only)


def check_recordable_numerics(device_type: str, allow_nondeterministic: bool = False) -> None:
    """Refuse to record on a GPU without deterministic algorithms, unless asked to: such a proof
    replays only approximately even on the same GPU, and the verifier's tolerance does not
    always cover it (an honest 114M-parameter GPT proof made with PyTorch's default kernels was
    rejected on the same H200). Raises ConfigError naming both ways on."""
    if (device_type != "cuda" or allow_nondeterministic
            or torch.are_deterministic_algorithms_enabled()):
        return
    raise ConfigError(
        "recording on a GPU needs deterministic algorithms, so that the proof replays bitwise on "
        "the same kind of GPU: call torch.use_deterministic_algorithms(True) before training (and "
        f"start Python with {_CUBLAS_ENV}={CUBLAS_WORKSPACE} in the environment, which "
        "deterministic cuBLAS needs). A proof made with PyTorch's default (nondeterministic) "
        "kernels replays only approximately and may be rejected even on the same GPU; to record "
        "one anyway, pass allow_nondeterministic=True")
