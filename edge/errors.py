"""Exceptions with a message that names the problem, and the CLI exit code each maps to."""


class EdgeError(Exception):
    """Base class: every error the package raises on purpose derives from it."""

    exit_code = 1


class InputError(EdgeError, ValueError):
    """An image, array, file or argument that cannot be used as given."""

    exit_code = 65  # EX_DATAERR


class ConfigError(EdgeError, ValueError):
    """A configuration value that is unknown, of the wrong type or out of range."""

    exit_code = 78  # EX_CONFIG


class ModelError(EdgeError):
    """A model file that is missing, altered (sha256 mismatch) or not loadable."""

    exit_code = 69  # EX_UNAVAILABLE


class WatchlistError(EdgeError, ValueError):
    """A watchlist that is empty, malformed or inconsistent."""

    exit_code = 65


class UsageError(EdgeError, ValueError):
    """The command line lacks something it needs (e.g. ``--config``): exit 2, like argparse."""

    exit_code = 2  # EX_USAGE of the shell convention argparse follows
