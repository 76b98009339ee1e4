"""The one exception type the command line turns into a one-line message."""


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
