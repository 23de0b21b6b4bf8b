"""The one exception type users see: its message is a complete one-line explanation."""


class RuvdllmError(Exception):
    """A user-facing error. The CLI prints `error: <message>` and exits non-zero, with no
    traceback unless `--debug`; the servers turn it into a 4xx JSON error."""
