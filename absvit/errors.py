"""The errors the CLI reports as one line (exit status 2) instead of a traceback."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


class DatasetError(ValueError):
    """Bad dataset input; the message names the path and what was expected."""


class TrackingError(LookupError):
    """The tracking store does not hold what was asked for; the message names the store."""


class JobFailed(RuntimeError):
    """A submitted job failed; the message names its log file."""
