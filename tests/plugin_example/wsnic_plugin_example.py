"""An example transport plug-in: it listens nowhere, and says so recognisably.

``WSNIC_PLUGIN_EXAMPLE_FAIL=1`` makes its factory raise, for the test that a broken
plug-in stops the server with one line naming it.
"""

from __future__ import annotations

import os

import trio

from wsnic_trio import Config
from wsnic_trio.transports import PeerHandler, Transport

DESCRIPTION = "example plug-in transport (listens nowhere)"


class ExampleTransport:
    name = "example"

    def describe(self) -> str:
        return DESCRIPTION

    async def serve(
        self, handler: PeerHandler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await trio.sleep_forever()

    def close(self) -> None:
        pass


def from_config(config: Config) -> list[Transport]:
    if os.environ.get("WSNIC_PLUGIN_EXAMPLE_FAIL"):
        raise RuntimeError("the example plug-in was told to fail")
    return [ExampleTransport()]
