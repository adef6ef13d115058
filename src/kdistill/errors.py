"""The one exception users see: a one-line message that names the flag or file and the fix."""

from __future__ import annotations

import errno


class KdistillError(Exception):
    """Bad input or environment. The CLI prints `kdistill: error: <message>` and exits 2.

    Raise it wherever a user can fix the problem; let real bugs raise anything else so they keep
    their traceback.
    """


# OS errors that describe the machine, not a bug: a full disk, a folder the user may not write,
# a path through a file. Any write can meet them, so the CLI turns them into one line.
_ENVIRONMENT_HINTS = {
    errno.ENOSPC: "the disk is full; free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is used up; free some space or write elsewhere",
    errno.EACCES: "no permission; choose a folder you can write (--output-dir, --data-dir)",
    errno.EPERM: "not permitted; choose a folder you can write (--output-dir, --data-dir)",
    errno.EROFS: "a read-only file system; write elsewhere (--output-dir, --data-dir)",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EEXIST: "a file is in the way of a folder; choose another path",
    errno.EISDIR: "a folder is in the way of a file; choose another path",
    errno.ENAMETOOLONG: "the path is too long; choose a shorter one",
}


def environment_error(e: OSError) -> KdistillError | None:
    """`e` as a one-line KdistillError when the user can fix it (space, permissions, paths),
    else None: other OS errors are bugs or transient failures and keep their traceback."""
    hint = _ENVIRONMENT_HINTS.get(e.errno) if e.errno is not None else None
    if hint is None:
        return None
    where = f"{e.filename}: " if e.filename else ""
    reason = (e.strerror or str(e)).strip().splitlines()[0]
    return KdistillError(f"{where}{reason} ({hint})")


class RunStopped(Exception):
    """A run stopped on request (SIGINT, SIGTERM) after saving a resumable checkpoint. The CLI
    prints the message, which says how to resume, and exits with `exit_code` (128 + signal)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
