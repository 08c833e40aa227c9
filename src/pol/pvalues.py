"""The KS test's p-values (`scipy.stats.kstwo.sf`) from a helper Python process, so that the
verifying process never imports `scipy.stats` (0.5-0.8 s, all of it under the GIL). Torch-free:
a `pol verify` process starts one (`start_early`) before it imports torch, and the helper's
import of scipy then runs on another core while this process imports torch (`pol verify --all`
of digits-cnn on 2 cores: 2.49-3.16 s -> 2.15-2.67 s per process). A GPU verification that has
none starts one when it reads W_0. The p-values are the helper's floats exactly (JSON keeps a
float's repr); where it cannot answer, `pol.verifier.initcheck.ks_pvalues` computes them
in-process.
"""

from __future__ import annotations

import atexit
import sys
import threading

_HELPER_CODE = """
import json, sys
sys.path[:] = json.loads(sys.argv[1])
import numpy as np
from scipy import stats
pairs = json.loads(sys.stdin.read())
out = [float(np.clip(stats.kstwo.sf(float(d), int(n)), 0.0, 1.0)) for d, n in pairs]
sys.stdout.write(json.dumps(out))
"""


def _is_python(executable: str) -> bool:
    """Whether `executable` names a Python interpreter (python, python3.11, pypy3, python.exe)."""
    import os
    return bool(executable) and os.path.basename(executable).lower().startswith(("python", "pypy"))


class PvalueHelper:
    """A Python process that imports scipy.stats while this one replays, then computes the KS
    p-values (`ks_pvalue`, the same scipy, floats exactly as computed: JSON keeps a float's
    repr). scipy.stats takes 0.5-0.7 s to import, all of it under the GIL: in the verifying
    process that time is taken from a GPU replay whose host thread needs the GIL for every launch
    (ResNet-20's first replayed segment ran 0.9-1.9 s slower while the KS thread imported it).
    Started with a `pol verify` process (`start_early`), or by a GPU verification that has not
    imported scipy.stats; `pvalues` gives None where
    the helper cannot answer (no interpreter, an error, a wrong answer), and its caller computes
    here instead; `close` ends it, whatever it is doing."""

    TIMEOUT_S = 120.0

    def __init__(self) -> None:
        import json
        import subprocess
        self._proc = None
        if not _is_python(sys.executable):  # an embedding program (uWSGI, a GUI): no helper
            return
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _HELPER_CODE, json.dumps(sys.path)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError:
            self._proc = None

    def pvalues(self, pairs: list[tuple[float, int]]) -> list[float] | None:
        import json
        import math
        import subprocess
        proc, self._proc = self._proc, None  # one question per helper
        if proc is None:
            return None
        try:
            out, _ = proc.communicate(json.dumps([[float(d), int(n)] for d, n in pairs]).encode(),
                                      timeout=self.TIMEOUT_S)
            got = json.loads(out) if proc.returncode == 0 else None
        except (subprocess.TimeoutExpired, OSError, ValueError):
            proc.kill()
            proc.wait()
            return None
        if (not isinstance(got, list) or len(got) != len(pairs)
                or not all(isinstance(p, float) and (math.isnan(p) or 0.0 <= p <= 1.0)
                           for p in got)):
            return None
        return got

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()


_early: PvalueHelper | None = None
_early_lock = threading.Lock()


def start_early() -> None:
    """Start this process's helper now (once), if scipy.stats is not imported here; it is ended
    at exit if no verification took it."""
    global _early
    with _early_lock:
        if _early is not None or "scipy.stats" in sys.modules:
            return
        _early = PvalueHelper()
        atexit.register(_early.close)


def take_early() -> PvalueHelper | None:
    """The helper `start_early` started, for one verification's question (None: none, or taken
    already)."""
    global _early
    with _early_lock:
        h, _early = _early, None
    return h if h is not None and h._proc is not None else None
