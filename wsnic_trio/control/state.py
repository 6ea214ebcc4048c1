"""What the control layer runs next to one server: its capture and its port forwards.

The core knows neither: the server sees capture only through its
:class:`~wsnic_trio.core.CaptureHook`, and forwards only reach it as TCP/UDP sockets.
"""

from __future__ import annotations

import dataclasses

from wsnic_trio.control.forward import ForwardManager
from wsnic_trio.control.pcap import PcapManager
from wsnic_trio.core import Server

__all__ = ["Control"]


@dataclasses.dataclass
class Control:
    server: Server
    forwards: ForwardManager
    pcap: PcapManager | None = None
