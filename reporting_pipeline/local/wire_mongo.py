"""A MongoDB-wire server (mongoeco) for local runs where several processes must share one database.

`python -m reporting_pipeline.local.wire_mongo [--port P] [--seed SPEC]` loads the seed's documents (if
given), prints `READY <host> <port>` once it accepts connections and serves until SIGTERM or SIGINT.
Clients use plain pymongo: mongodb://127.0.0.1:P/.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys


def _seeded_engine(database: str, spec_json: str | None):
    """A new in-memory engine, holding the documents of the seed spec if one is given: loaded in-process,
    about five times faster than inserting the same through the wire protocol."""
    from mongoeco import MongoClient
    from mongoeco.engines.memory import MemoryEngine

    from .seed import SeedSpec, seed_documents

    engine = MemoryEngine()
    # The client must stay open (so it is returned): closing it disconnects, and empties, the engine.
    client = MongoClient(engine)
    if spec_json:
        seed_documents(client[database], SeedSpec.from_json(spec_json))
    return engine, client


async def _serve(host: str, port: int, engine) -> None:
    from mongoeco.wire import AsyncMongoEcoProxyServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncMongoEcoProxyServer(engine=engine, host=host, port=port) as server:
        print(f"READY {server.address.host} {server.address.port}", flush=True)
        await stop.wait()


class MongoWireServer:
    """Runs the wire server in a child process; `uri` is set once it is ready.

    `seed` (a SeedSpec): its documents are in `database` when the server is ready, loaded in the server's process
    as `reporting-pipeline dev` loads them; its files are the caller's to upload (`seed.upload_objects`).
    """

    def __init__(self, port: int = 0, seed=None, database: str = "reporting"):
        self.port = port
        self.seed, self.database = seed, database
        self.process: subprocess.Popen | None = None
        self.uri = ""

    def __enter__(self):
        seed = ["--database", self.database, "--seed", self.seed.to_json()] if self.seed else []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reporting_pipeline.local.wire_mongo", "--port", str(self.port), *seed],
            stdout=subprocess.PIPE, text=True,
        )
        line = (self.process.stdout.readline() or "").split()
        if len(line) != 3 or line[0] != "READY":
            self.process.kill()
            raise RuntimeError(f"MongoDB-wire server did not start (port {self.port} taken?)")
        self.port = int(line[2])
        self.uri = f"mongodb://127.0.0.1:{self.port}/?directConnection=true"
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--database", default="reporting", help="the database the seed goes into")
    parser.add_argument("--seed", help="seed spec (JSON, see reporting_pipeline.local.seed.SeedSpec) to load before serving")
    args = parser.parse_args()
    engine, _client = _seeded_engine(args.database, args.seed)
    asyncio.run(_serve(args.host, args.port, engine))


if __name__ == "__main__":
    main()
