"""Errors that the entry points turn into one clear line instead of a traceback."""


class ConfigError(ValueError):
    """A bad preset, override or command-line value; the message names the setting and why."""


class StartupError(RuntimeError):
    """A process cannot start for a reason outside the code: a port in use, an old libzmq, a bad key file."""
