"""The one exception users see: a one-line message that names the flag or file and the fix."""


class KdistillError(Exception):
    """Bad input or environment. The CLI prints `kdistill: error: <message>` and exits 2.

    Raise it wherever a user can fix the problem; let real bugs raise anything else so they keep
    their traceback.
    """


class RunStopped(Exception):
    """A run stopped on request (SIGINT, SIGTERM) after saving a resumable checkpoint. The CLI
    prints the message, which says how to resume, and exits with `exit_code` (128 + signal)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
