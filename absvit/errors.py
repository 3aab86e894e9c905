"""The errors the CLI reports as one line (exit status 2) instead of a traceback."""
import errno


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


class DatasetError(ValueError):
    """Bad dataset input; the message names the path and what was expected."""


class TrackingError(LookupError):
    """The tracking store does not hold what was asked for; the message names the store."""


class JobFailed(RuntimeError):
    """A submitted job failed; the message names its log file."""


class UsageError(ValueError):
    """A wrong flag or value on the command line; the message names it and the valid choices."""


class DiskFull(OSError):
    """No space left to write a file (errno ENOSPC). Writes are atomic (``absvit.io.atomic_path``): the file
    already there is kept. The message names the file, its device, the bytes needed and the bytes free."""

    def __init__(self, message: str, *, path=None, needed: int | None = None, free: int | None = None,
                 kept: str = ""):
        super().__init__(f"{message}; {kept}" if kept else message)  # one argument: no "[Errno 28]" prefix
        self.errno, self.path, self.needed, self.free, self.base = errno.ENOSPC, path, needed, free, message

    def noted(self, kept: str) -> "DiskFull":
        """The same error saying ``kept`` (what is kept, what a rerun does) instead of its generic note."""
        return DiskFull(self.base, path=self.path, needed=self.needed, free=self.free, kept=kept)


class StaleCheckpoint(UsageError):
    """A checkpoint to resume from belongs to a different run (model, recipe, data, ...)."""


def did_you_mean(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
