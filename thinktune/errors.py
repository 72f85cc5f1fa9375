"""Errors a user can cause. The CLI prints them as one line and exits with their `exit_code` (2 for bad input, 1
for a check that found a problem); bugs stay tracebacks."""


class UserError(Exception):
    """Base class for every error caused by user input (config, data, paths, environment)."""

    exit_code = 2


class CheckFailed(UserError):
    """A check ran and found a problem (an artefact beyond its tolerance): exit code 1."""

    exit_code = 1


class ConfigError(UserError):
    """Invalid YAML, unknown key, bad value, or a bad --set override."""


class DataError(UserError):
    """A dataset file is missing or unreadable, or too many of its records are unusable."""


class ModelNotFoundError(UserError):
    """The model reference does not point to anything loadable on this machine."""


class EnvironmentProblem(UserError):
    """The machine lacks something the run needs (a package, a GPU)."""


class WeightsError(UserError):
    """Model weights refused (a .pt/.bin file that needs pickled code) or not fitting the model's config."""
