"""Errors the plugin shows to the user: one line each, never a traceback (no qgis imports here)."""

SETUP_HINT = "use PointSAM > Set up engine… (menu Plugins > PointSAM)"
"""Ends every "no engine" message; the message bar offers the "Set up engine…" button for messages holding it."""


def needs_setup(message: str) -> bool:
    """Whether ``message`` is a "no engine" message, answered by the "Set up engine…" dialog."""
    return SETUP_HINT in message


class PluginError(Exception):
    """Root of the errors the plugin raises on purpose; the message bar shows the message."""


class EngineMissingError(PluginError):
    """The engine's Python environment is not there or has no pointsam installed."""


class EngineUnavailableError(PluginError):
    """The engine process is not running or does not answer."""


class EngineRequestError(PluginError):
    """The engine refused a request (bad input); carries the engine's code and one-line message."""

    def __init__(self, message: str, code: str = "", status: int = 0):
        super().__init__(message)
        self.code, self.status = code, status


class InstallError(PluginError):
    """Setting up the engine's environment failed; the message says what to do."""


class JobFailedError(PluginError):
    """An engine job ended failed or cancelled."""
