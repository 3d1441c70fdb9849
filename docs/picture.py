"""Redraws docs/inspect.png: the embedded model inspecting examples/seven.png.

Run: ``make picture`` (or ``python docs/picture.py``). Starts a server of the embedded
model on a free loopback port, asks it through the Python client, as a user would, and
stops it.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

from flatscope.client import Client
from flatscope.grpc.server import Server
from flatscope.images import load_image
from flatscope.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "examples" / "seven.png"
OUTPUT = ROOT / "docs" / "inspect.png"


def main() -> int:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def call(coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(120)

    server = call(_make_server())
    try:
        port = call(server.start())
        call(server.load_model())
        with Client(f"127.0.0.1:{port}") as client:
            shape = tuple(client.metadata().inputs[0].shape[1:])
            inputs = load_image(IMAGE, shape)[None]
            picture = client.plot_inspect(inputs, OUTPUT)
    finally:
        call(server.stop(grace=0))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
    print(
        f"wrote {OUTPUT.relative_to(ROOT)}: flat[{picture.flat_index}] <- "
        f"source{picture.source_index}, predicted class {picture.units[0]}"
    )
    return 0


async def _make_server() -> Server:
    return Server(Settings(host="127.0.0.1", port=0, metrics_port=0))


if __name__ == "__main__":
    sys.exit(main())
