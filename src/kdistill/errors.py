"""The one exception users see: a one-line message that names the flag or file and the fix."""


class KdistillError(Exception):
    """Bad input or environment. The CLI prints `kdistill: error: <message>` and exits 2.

    Raise it wherever a user can fix the problem; let real bugs raise anything else so they keep
    their traceback.
    """
