"""Errors the plugin shows to the user: one line each, never a traceback (no qgis imports here)."""


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


class JobFailedError(PluginError):
    """An engine job ended failed or cancelled."""
