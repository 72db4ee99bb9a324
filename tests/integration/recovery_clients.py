"""Many python-socketio clients in one process (asyncio) that recover across reconnects, driven
by the test over stdin/stdout, one JSON line each way.

    python -m tests.integration.recovery_clients URL WEBSOCKETS POLLING

Commands (stdin): ``connect [URL]`` (every client connects with its cursor, to URL if given;
answers once every client has its recovery status), ``disconnect`` (all), ``report`` (each
client's order ids and statuses), ``quit``. Each client keeps a ``Cursor`` and drops what
it has seen, as the page's helper does.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import socketio
from engineio.payload import Payload

from openalgo_events.recovery import STATUS_EVENT, Cursor

BATCH = 25  # clients connecting at once
# A recovery sends its events together; python-engineio's client refuses a polling response of
# more than 16 packets unless this is raised.
Payload.max_decode_packets = 100_000


class Client:
    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.cursor = Cursor()
        self.orderids: list[str] = []
        self.statuses: list[dict[str, Any]] = []
        self.dropped = 0
        self.status = asyncio.Event()
        self.sio = socketio.AsyncClient(reconnection=False)
        self.sio.on("*", self._record)

    async def _record(self, event: str, payload: Any = None) -> None:
        if event == STATUS_EVENT:
            self.statuses.append(payload)
            self.cursor.adopt(payload["offset"])
            self.status.set()
        elif not self.cursor.accept(payload):
            self.dropped += 1
        elif event == "order_event":
            self.orderids.append(payload["orderid"])

    async def connect(self, url: str) -> None:
        self.status.clear()
        await self.sio.connect(url, transports=[self.transport], wait_timeout=60,
                               auth=self.cursor.auth())
        if os.environ.get("RECOVERY_CLIENTS_NO_STATUS") != "1":  # a server with recovery off
            await asyncio.wait_for(self.status.wait(), 120)


async def main(url: str, websockets: int, polling: int) -> None:
    clients = [Client("websocket") for _ in range(websockets)]
    clients += [Client("polling") for _ in range(polling)]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def answer(body: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(body) + "\n")
        sys.stdout.flush()

    while True:
        command, _, argument = (await reader.readline()).decode().strip().partition(" ")
        if command == "connect":
            url = argument or url
            for start in range(0, len(clients), BATCH):
                await asyncio.gather(*(c.connect(url) for c in clients[start:start + BATCH]))
            answer({"connected": len(clients)})
        elif command == "disconnect":
            await asyncio.gather(*(c.sio.disconnect() for c in clients))
            answer({"disconnected": len(clients)})
        elif command == "report":
            answer({"clients": [{"transport": c.transport, "orderids": c.orderids,
                                 "statuses": c.statuses, "dropped": c.dropped}
                                for c in clients]})
        else:
            await asyncio.gather(*(c.sio.disconnect() for c in clients if c.sio.connected))
            return


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
