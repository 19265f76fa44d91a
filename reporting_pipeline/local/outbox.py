"""A local SMTP sink that saves every message as a .eml file, and the listing of that outbox folder.

`python -m reporting_pipeline.local.outbox serve --port P --folder DIR` prints `READY <host> <port>` once it
accepts connections and serves until SIGTERM or SIGINT. `python -m reporting_pipeline.local.outbox [--outbox DIR]`
lists the saved messages (the same as `reporting-pipeline outbox`).
"""

from __future__ import annotations

import argparse
import email
import email.policy
import itertools
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_HOME = ".dagster_home"
LINK_RE = re.compile(r"https?://\S+")


class EmlFolderHandler:
    """aiosmtpd handler writing each accepted message to `folder` as `<received>-<n>.eml`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        with self._lock:
            # Received time first, so names sort in arrival order across restarts of the sink.
            name = f"{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}-{os.getpid()}-{next(self._counter):05d}.eml"
        tmp = self.folder / f".{name}.tmp"
        tmp.write_bytes(raw)
        os.replace(tmp, self.folder / name)  # a reader never sees half a message
        return "250 Message accepted for delivery"


def serve(host: str, port: int, folder: Path) -> None:
    """Run the sink until SIGTERM or SIGINT."""
    from aiosmtpd.controller import Controller

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    controller = Controller(EmlFolderHandler(folder), hostname=host, port=port)
    controller.start()
    try:
        print(f"READY {host} {controller.port}", flush=True)
        stop.wait()
    finally:
        controller.stop()


@dataclass
class OutboxEntry:
    path: Path
    received: datetime
    to: str
    subject: str
    link: str


def report_link(message) -> str:
    """The report's link in a report email ('' when it has none)."""
    body = message.get_body(("plain",))
    text = body.get_content() if body is not None else ""
    # A report email's own link is the first of its body, in any language; the unsubscribe link comes later.
    match = LINK_RE.search(text)
    return match.group(0) if match else ""


def read_outbox(folder: Path) -> list[OutboxEntry]:
    """The saved messages, oldest first."""
    entries = []
    for path in sorted(Path(folder).glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        received = datetime.fromtimestamp(path.stat().st_mtime).astimezone()  # written on receipt; local time
        entries.append(OutboxEntry(path, received, str(message["To"] or ""), str(message["Subject"] or ""),
                                   report_link(message)))
    return entries


def outbox_folder(args) -> Path:
    return Path(args.outbox) if args.outbox else Path(args.home) / "outbox"


def add_outbox_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", default=DEFAULT_HOME, help="dev stack home (default %(default)s)")
    parser.add_argument("--outbox", help="folder of .eml files (default HOME/outbox)")
    parser.add_argument("--last", type=int, default=0, help="show only the N most recent messages")


def outbox_main(args) -> int:
    """`reporting-pipeline outbox`: one line per saved message: time, to, subject, link."""
    folder = outbox_folder(args)
    if not folder.is_dir():
        print(f"no outbox at {folder} (it is created by `reporting-pipeline dev`)", file=sys.stderr)
        return 1
    entries = read_outbox(folder)
    shown = entries[-args.last:] if args.last > 0 else entries
    for entry in shown:
        print(f"{entry.received:%Y-%m-%d %H:%M:%S}  {entry.to:32}  {entry.subject:30}  {entry.link or '-'}")
    print(f"{len(entries)} message(s) in {folder}" + (f", {len(shown)} shown" if len(shown) < len(entries) else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        parser = argparse.ArgumentParser(prog="reporting_pipeline.local.outbox serve")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=1025)
        parser.add_argument("--folder", required=True)
        args = parser.parse_args(argv[1:])
        serve(args.host, args.port, Path(args.folder))
        return 0
    parser = argparse.ArgumentParser(prog="reporting_pipeline.local.outbox", description=outbox_main.__doc__)
    add_outbox_arguments(parser)
    return outbox_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
