"""Fault injection with real servers: S3 that fails a share of requests, SMTP that defers, a TCP link to cut."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter

from werkzeug.serving import make_server

from reporting_pipeline.local.embedded import Outbox, free_port


class FaultyS3Server:
    """moto's S3 behind a WSGI layer that answers 500/503 to a share of object requests (or to those `fail_if` picks)."""

    def __init__(self, fail_ratio: float = 0.0, seed: int = 1, fail_if=None):
        from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app

        self.fail_ratio = fail_ratio
        self.fail_if = fail_if  # (method, path) -> bool: fail exactly these requests while enabled
        self.enabled = False
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests: Counter = Counter()
        self.injected = 0
        self.app = create_backend_app("s3")
        self.port = free_port()
        self.server = make_server("127.0.0.1", self.port, self._wsgi, threaded=True, request_handler=MotoRequestHandler)
        self.endpoint_url = f"http://127.0.0.1:{self.port}"

    def _wsgi(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        is_object = path.count("/") >= 2  # /bucket/key...: object requests, not bucket set-up
        with self.lock:
            self.requests[(environ["REQUEST_METHOD"], path)] += 1
            if self.fail_if is not None:
                fail = self.enabled and self.fail_if(environ["REQUEST_METHOD"], path)
            else:
                fail = self.enabled and is_object and self.rng.random() < self.fail_ratio
            status = self.rng.choice(["500 Internal Server Error", "503 Slow Down"]) if fail else ""
            if fail:
                self.injected += 1
        if fail:
            environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            code = "InternalError" if status.startswith("500") else "SlowDown"
            start_response(status, [("Content-Type", "application/xml")])
            return [f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()]
        return self.app(environ, start_response)

    def __enter__(self):
        # A short poll: shutdown() waits up to one interval for the serving loop to notice.
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()


class DeferringOutbox(Outbox):
    """An SMTP handler that answers 451 (try again later) to the first `defer_first` messages."""

    def __init__(self, folder=None, defer_first: int = 0):
        super().__init__(folder)
        self.defer_first = defer_first
        self.deferred = 0
        self.attempts: Counter = Counter()  # per Message-ID, accepted or not

    async def handle_DATA(self, server, session, envelope):
        import email

        message_id = email.message_from_bytes(envelope.content)["Message-ID"]
        with self._lock:
            self.attempts[message_id] += 1
            if self.deferred < self.defer_first:
                self.deferred += 1
                return "451 4.3.0 Mail server temporarily busy, try again later"
        return await super().handle_DATA(server, session, envelope)


class CuttableTcpProxy:
    """Forwards a local port to a target; `cut()` drops every connection and refuses new ones for a while.

    `cut_after(messages, refuse)` arms an outage triggered by traffic, not by a clock: once the client
    has sent `messages` more chunks, every connection is dropped and the next `refuse` connection
    attempts are refused. The outage then falls where the client is known to be talking to the server.
    """

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.down_until = 0.0
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        self.cuts = 0
        self.refused = 0
        self.stopped = False
        self.countdown: int | None = None  # client chunks until an armed outage
        self.refuse_left = 0
        self.outage_over = threading.Event()

    def _pump(self, src, dst, from_client=False):
        try:
            while data := src.recv(65536):
                if from_client and self._count_down():
                    self._outage()
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def _accept(self):
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                refuse = self.refuse_left > 0 or time.monotonic() < self.down_until
                if refuse:
                    self.refused += 1
                    if self.refuse_left > 0:
                        self.refuse_left -= 1
                        if self.refuse_left == 0:
                            self.outage_over.set()
            if refuse:
                client.close()  # the database is "unreachable"
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the server is shutting down with the test
                client.close()
                continue
            with self.lock:
                self.connections += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def cut_after(self, messages: int, refuse: int) -> None:
        with self.lock:
            self.countdown, self.refuse_left = messages, refuse
            self.outage_over.clear()

    def _count_down(self) -> bool:
        with self.lock:
            if self.countdown is None:
                return False
            self.countdown -= 1
            if self.countdown > 0:
                return False
            self.countdown = None
            return True

    def _outage(self) -> None:
        self.cuts += 1
        with self.lock:
            connections, self.connections = self.connections, []
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass

    def cut(self, seconds: float) -> None:
        self.cuts += 1
        self.down_until = time.monotonic() + seconds
        with self.lock:
            for conn in self.connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                    conn.close()
                except OSError:
                    pass
            self.connections.clear()

    def __enter__(self):
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.stopped = True
        self.listener.close()
        self.cut(0)
