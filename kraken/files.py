"""Small file operations shared by the stores, backends and daemons (blocking: run them in a worker), and
the full disk: one test for it, and the error that names where it struck.

A write fails with ``ENOSPC`` when the filesystem is full and with ``EDQUOT`` when the user's quota is used
up; for us both mean the same: this blob cannot be stored here now, and trying again at once will not help.
The stores clean up what they had begun and let the error through (as it is, or as ``OutOfSpace`` where they
add where it happened); the HTTP layers answer it with 507 Insufficient Storage
(``kraken.registry.errors.InsufficientStorage``, ``kraken.origin.http``). Nothing remembers the failure: the
next write tries the disk again, so a daemon works as soon as space is freed.
"""

from __future__ import annotations

import errno
import os

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def remove_quietly(path: str) -> None:
    """Delete ``path`` if it is there; a file already gone is not an error."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def is_out_of_space(error: BaseException | None) -> bool:
    """Whether ``error`` is a write that failed for want of space (ENOSPC, EDQUOT)."""
    return isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS


class OutOfSpace(OSError):
    """No space left on the device (or no quota left) for ``what``.

    An ``OSError`` with the original errno, so code that handles OSError
    still does; ``str()`` reads "no space left on device: <what>"."""

    def __init__(self, what: str, cause: BaseException | None = None) -> None:
        code = cause.errno if isinstance(cause, OSError) and cause.errno in NO_SPACE_ERRNOS else errno.ENOSPC
        super().__init__(code, f"no space left on device: {what}")
        self.what = what

    def __str__(self) -> str:
        return str(self.strerror)


def errno_name(error: BaseException) -> str:
    """``ENOSPC`` or ``EDQUOT`` (for an answer's detail and the logs)."""
    code = getattr(error, "errno", None)
    return errno.errorcode.get(code, "ENOSPC") if isinstance(code, int) else "ENOSPC"
