"""streambinder: declare functions, bind them to destinations, run them on any backend.

``import binder`` loads no backend client; binders are found through the
``binder`` entry-point group when an app starts.
"""

from binder.app import App
from binder.bindings import BindingState
from binder.clock import ManualClock
from binder.errors import (
    BackendError,
    BinderError,
    CapabilityError,
    ClosedError,
    ConfigError,
    ConversionError,
    ExpressionError,
    HandlerError,
    MessageExpired,
)
from binder.message import TOMBSTONE, Message

__version__ = "0.1.0"
"""The package's version; the installed distribution's metadata (``binder --version``) wins."""

__all__ = [
    "TOMBSTONE",
    "App",
    "BackendError",
    "BinderError",
    "BindingState",
    "CapabilityError",
    "ClosedError",
    "ConfigError",
    "ConversionError",
    "ExpressionError",
    "HandlerError",
    "ManualClock",
    "Message",
    "MessageExpired",
]
