"""wsnic-trio: emulators and VMs on one shared virtual Ethernet LAN, served by Trio."""

from __future__ import annotations

__version__ = "0.1.0"

from ._config import Config as Config
from ._exceptions import ConfigError as ConfigError
from ._exceptions import PeerClosed as PeerClosed
from ._exceptions import PeerError as PeerError
from ._exceptions import PeerProtocolError as PeerProtocolError
from ._exceptions import PeerTimeout as PeerTimeout
from ._exceptions import SetupError as SetupError
from ._exceptions import WsnicError as WsnicError

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
