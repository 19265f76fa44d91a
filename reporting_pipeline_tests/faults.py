"""Fault injection with real servers: S3 that fails a share of requests, SMTP that defers, a TCP link to cut."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter

from werkzeug.serving import make_server

from reporting_pipeline.embedded import Outbox, free_port


class FaultyS3Server:
    """moto's S3 behind a WSGI layer that answers 500/503 to a share of object requests."""

    def __init__(self, fail_ratio: float, seed: int = 1):
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

        self.fail_ratio = fail_ratio
        self.enabled = False
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests: Counter = Counter()
        self.injected = 0
        self.app = DomainDispatcherApplication(create_backend_app)
        self.port = free_port()
        self.server = make_server("127.0.0.1", self.port, self._wsgi, threaded=True, request_handler=MotoRequestHandler)
        self.endpoint_url = f"http://127.0.0.1:{self.port}"

    def _wsgi(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        is_object = path.count("/") >= 2  # /bucket/key...: object requests, not bucket set-up
        with self.lock:
            self.requests[(environ["REQUEST_METHOD"], path)] += 1
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
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
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
    """Forwards a local port to a target; `cut()` drops every connection and refuses new ones for a while."""

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

    def _pump(self, src, dst):
        try:
            while data := src.recv(65536):
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
            if time.monotonic() < self.down_until:
                client.close()  # the database is "unreachable"
                self.refused += 1
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.connections += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

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
