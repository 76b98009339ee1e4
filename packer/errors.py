"""The errors the command line turns into one line and an exit code, and the signals that stop a build."""
import signal


class UserError(Exception):
    """A problem with the user's input or environment: bad option, missing file, bad image.

    The message is a single line that names the file or value and says what to do.
    The command line prints it without a traceback and exits non-zero.
    """


class ImageError(UserError):
    """An image that cannot be decoded. Picklable, so it crosses process boundaries intact."""

    def __init__(self, path: str, reason: str):
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot read image {self.path}: {self.reason}"


# The signals that stop a build as Ctrl-C does, but keep its work for --resume (see Interrupted)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """The build was asked to stop by a signal other than Ctrl-C (SIGTERM from ``kill``, a batch
    scheduler or a container stop; SIGHUP from a closed terminal). It stops as Ctrl-C does, but
    keeps its work folder (with every finished chunk journaled) for ``--resume``."""

    def __init__(self, signal_number: int):
        super().__init__(signal_number)
        self.signal_name = signal.Signals(signal_number).name
        self.exit_code = 128 + signal_number
