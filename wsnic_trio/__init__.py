"""wsnic-trio: emulators and VMs on one shared virtual Ethernet LAN, served by Trio."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Config as Config
from .errors import ConfigError as ConfigError
from .errors import PeerClosed as PeerClosed
from .errors import PeerError as PeerError
from .errors import PeerProtocolError as PeerProtocolError
from .errors import PeerTimeout as PeerTimeout
from .errors import SetupError as SetupError
from .errors import WsnicError as WsnicError

__all__ = [
    "Config",
    "ConfigError",
    "PeerClosed",
    "PeerError",
    "PeerProtocolError",
    "PeerTimeout",
    "SetupError",
    "WsnicError",
    "__version__",
]
