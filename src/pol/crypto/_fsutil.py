"""Small filesystem helpers: publish a finished temporary file under its final name."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["publish"]


def publish(tmp: str | os.PathLike[str], dest: str | os.PathLike[str], overwrite: bool) -> None:
    """Move a complete ``tmp`` file to ``dest`` (same directory).

    With ``overwrite`` this is an atomic ``os.replace``.  Without it, ``os.link``
    fails atomically if ``dest`` appeared meanwhile (raising ``FileExistsError``);
    on filesystems without hard links it falls back to check-then-rename.
    """
    if overwrite:
        os.replace(tmp, dest)
        return
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (e.g. some network/FAT filesystems)
        if os.path.lexists(dest):
            raise FileExistsError(17, "File exists", str(Path(dest))) from None
        os.rename(tmp, dest)
        return
    os.unlink(tmp)
