"""Error types for failures a user can act on.

Every expected failure (bad config, bad data, impossible split, missing upstream run) raises a
subclass of :class:`TfiError` whose message names the problem. The CLI prints that message and
exits non-zero without a traceback; anything else is a bug and keeps its traceback.
"""


class TfiError(Exception):
    """An expected failure whose message is meant for the user."""


class ConfigError(TfiError):
    """The experiment configuration is invalid."""


class DataError(TfiError):
    """The input data breaks the data contract."""


class SplitError(TfiError):
    """The data cannot be split into leak-free training, validation and test periods."""


class SelectionError(TfiError):
    """Feature selection could not produce a usable feature list."""


class StageError(TfiError):
    """A pipeline stage cannot run: a missing upstream result, a busy study, a bad model."""


class TrackingError(TfiError):
    """The MLflow tracking store or the Optuna storage cannot be used."""
