"""A Python client for the Flywheel HTTP API v1: :class:`Client` for calls, :class:`BackgroundLogger` (from
``Client.logger()``) for logging predictions and feedback from a request path without waiting on the network.
"""

from flywheel_client._client import Client
from flywheel_client._errors import FlywheelConnectionError, FlywheelError
from flywheel_client._logger import BackgroundLogger, LoggerSettings
from flywheel_client._version import __version__
from flywheel_client.types import FeedbackItem, IngestResult, PredictInput, PredictionItem

__all__ = [
    "BackgroundLogger",
    "Client",
    "FeedbackItem",
    "FlywheelConnectionError",
    "FlywheelError",
    "IngestResult",
    "LoggerSettings",
    "PredictInput",
    "PredictionItem",
    "__version__",
]
