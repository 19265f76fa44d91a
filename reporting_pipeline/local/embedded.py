"""Embedded stand-ins for MongoDB, S3 and SMTP, for the demo, the tests and `reporting-pipeline dev`.

They speak the real protocols where it matters: S3 is moto's HTTP server (boto3 and plain HTTP GETs
reach it over a socket) and SMTP is an aiosmtpd server that smtplib talks to. MongoDB is mongomock,
in-process, reached through the pymongo API (`wire_mongo` serves one to several processes).

`python -m reporting_pipeline.local.embedded s3 --port P --bucket B [--seed SPEC]` serves S3 on its own for
`reporting-pipeline dev`: it creates the bucket with default encryption, loads the seed's files, then
prints `READY <host> <port>`.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import logging
import os
import signal
import socket
import threading
import uuid
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import quote

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope

from reporting_pipeline.services.objectstore import Encryption, ensure_bucket, make_client, sha256_hex


def free_port() -> int:
    """A loopback TCP port nobody holds now, as the kernel picks it; whoever asked binds it a moment later.

    Test processes running side by side (pytest-xdist's worker N of PYTEST_XDIST_WORKER_COUNT, inherited by
    what they start) keep to ports of their own, so two of them are never handed the same port in that
    moment. (Linux gives bind() odd ports and connect() even ones: the share goes by port // 2.)
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    mine = int(worker[2:]) % count if worker.startswith("gw") and worker[2:].isdigit() and count > 1 else None
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if mine is None or port // 2 % count == mine:
            return port


class Outbox:
    """aiosmtpd handler keeping every accepted message, and writing each as .eml when given a folder."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder
        self.messages: list[EmailMessage] = []
        self.raw: list[bytes] = []  # exactly as received: what a receiving server reads
        self.envelopes: list[tuple[str, list[str]]] = []
        self._lock = threading.Lock()
        if folder:
            folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server, session, envelope: Envelope):
        raw = envelope.original_content or envelope.content
        message = email.message_from_bytes(raw, policy=email.policy.default)
        with self._lock:
            self.messages.append(message)
            self.raw.append(raw)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            if self.folder:
                (self.folder / f"{len(self.messages):05d}.eml").write_bytes(raw)
        return "250 Message accepted for delivery"


class SmtpServer:
    """A real SMTP server on loopback."""

    def __init__(self, handler, port: int | None = None):
        self.handler = handler
        logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every recipient at INFO
        self.port = port or free_port()
        self.controller = Controller(handler, hostname="127.0.0.1", port=self.port)

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()


def _keep_alive_handler():
    """moto's request handler, answering over persistent HTTP/1.1 connections as S3 does.

    Werkzeug's development server closes the connection after every response, so each request paid a
    TCP connect and teardown on both sides, which S3's persistent connections do not cost: measured, a
    tenth of boto3's CPU per GET (4.5 -> 4.1 ms) and a fifth of the stand-in's CPU in a 500-report run.
    """
    from io import BytesIO

    from moto.moto_server.werkzeug_app import MotoRequestHandler

    class KeepAliveHandler(MotoRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 120  # an idle connection's thread ends (clients reconnect), as S3 drops idle connections

        def setup(self) -> None:
            super().setup()
            # Headers and body go out as separate writes: with Nagle's algorithm the body would wait for
            # the client's delayed ACK of the headers (40 ms a response) on a kept-alive connection.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def run_wsgi(self) -> None:
            if self.headers.get("Expect", "").lower().strip() == "100-continue":
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            environ = self.make_environ()
            # The whole body is read before the app runs: whatever it left unread would be taken for the
            # next request on the connection. (Chunked bodies arrive de-chunked from make_environ.)
            if environ.get("wsgi.input_terminated"):
                body = environ["wsgi.input"].read()
            else:
                body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = BytesIO(body)
            response: list = []
            chunks: list[bytes] = []

            def start_response(status, headers, exc_info=None):
                response[:] = [status, headers]
                return chunks.append

            try:
                result = self.server.app(environ, start_response)
                try:
                    chunks.extend(result)
                finally:
                    getattr(result, "close", lambda: None)()
            except Exception as error:  # as werkzeug's server does: a 500, and the connection closed
                self.server.log("error", f"Error on request: {error!r}")
                response[:] = ["500 Internal Server Error", [("Content-Type", "text/plain")]]
                chunks[:] = [b"Internal Server Error"]
                self.close_connection = True
            status, headers = response
            code, _, reason = status.partition(" ")
            self.send_response(int(code), reason)
            names = set()
            for name, value in headers:
                self.send_header(name, value)
                names.add(name.lower())
            payload = b"".join(chunks)
            no_body = environ["REQUEST_METHOD"] == "HEAD" or int(code) in (204, 304) or int(code) < 200
            if "content-length" not in names and not no_body:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if not no_body:
                self.wfile.write(payload)
            self.wfile.flush()

    return KeepAliveHandler


class S3Server:
    """moto's S3 HTTP server on loopback.

    moto's own server picks a backend per request by listing its package directory (hundreds of
    stat calls a request); serving the S3 app directly spares that, the demo's largest CPU cost.
    """

    def __init__(self, port: int | None = None):
        from moto.moto_server.werkzeug_app import create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
        self.server = make_server("127.0.0.1", port or free_port(), create_backend_app("s3"), threaded=True,
                                  request_handler=_keep_alive_handler())
        # Clients hold idle connections open: closing the server must not wait for their threads.
        self.server.block_on_close = False
        self.endpoint_url = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self):
        # A short poll: shutdown() waits up to one interval for the serving loop to notice.
        threading.Thread(target=self.server.serve_forever, args=(0.05,), name="s3-server", daemon=True).start()
        return self

    def put_local(self, bucket: str, key: str, data: bytes, content_type: str, metadata: dict[str, str],
                  encryption: Encryption) -> None:
        """Store an object through the server's own request handling, without a socket or a signature:
        the same object an S3 PUT with these headers stores, a few times faster (for loading seed data)."""
        headers = {"Host": f"127.0.0.1:{self.server.server_port}", "Content-Type": content_type,
                   "x-amz-server-side-encryption": encryption.algorithm,
                   **{f"x-amz-meta-{k}": v for k, v in {**metadata, "sha256": sha256_hex(data)}.items()}}
        if encryption.algorithm == "aws:kms" and encryption.kms_key_id:
            headers["x-amz-server-side-encryption-aws-kms-key-id"] = encryption.kms_key_id
        response = self.server.app.test_client().put(f"/{bucket}/{quote(key)}", data=data, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"S3 stand-in refused {key}: {response.status_code} {response.get_data()[:200]!r}")

    def load_seed(self, bucket: str, spec, encryption: Encryption) -> int:
        """Store the files of a seed (a `reporting_pipeline.local.seed.SeedSpec`) as `seed()` uploads them;
        the number of participant files. `seed_documents` then writes the records pointing at them."""
        from reporting_pipeline.stages.store import file_metadata

        from .seed import seed_objects

        return seed_objects(lambda f: self.put_local(bucket, f.key, f.data, f.content_type,
                                                     file_metadata(f.recorded_at), encryption), spec)

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def patched_env(values: dict[str, str]):
    """Set environment variables for the duration of the block, restoring the old values after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def embedded_services(workdir: Path, outbox_folder: Path | None = None, bucket: str = "clinical-reports",
                      seed=None):
    """Start S3 and SMTP servers and point the pipeline's environment variables at them; with `seed` (a
    `SeedSpec`), the bucket holds its files (server-side encrypted, as `seed()` stores them)."""
    outbox = Outbox(outbox_folder)
    with S3Server() as s3, SmtpServer(outbox) as smtp:
        env = {
            "MONGODB_URI": f"mongomock://{uuid.uuid4().hex}",
            "AWS_ENDPOINT_URL": s3.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "REPORTS_BUCKET": bucket,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "EMAIL_FROM": "reports@trial-reports.example.org",
        }
        with patched_env(env):
            ensure_bucket(make_client(s3.endpoint_url), bucket)
            if seed is not None:
                s3.load_seed(bucket, seed, Encryption())
            yield env, outbox


def _serve_s3(args) -> None:
    from .seed import SeedSpec

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    encryption = Encryption(args.sse, args.kms_key_id)
    with S3Server(args.port) as server:
        s3 = make_client(server.endpoint_url)
        ensure_bucket(s3, args.bucket)
        rule = {"SSEAlgorithm": encryption.algorithm}
        if encryption.kms_key_id:
            rule["KMSMasterKeyID"] = encryption.kms_key_id
        s3.put_bucket_encryption(Bucket=args.bucket, ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": rule}]})
        if args.seed:
            server.load_seed(args.bucket, SeedSpec.from_json(args.seed), encryption)
        print(f"READY 127.0.0.1 {server.server.server_port}", flush=True)
        stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="service", required=True)
    s3 = sub.add_parser("s3", help="serve S3 on loopback until SIGTERM")
    s3.add_argument("--port", type=int, default=0)
    s3.add_argument("--bucket", required=True)
    s3.add_argument("--sse", default="AES256", help="the bucket's default encryption and the seed's")
    s3.add_argument("--kms-key-id")
    s3.add_argument("--seed", help="seed spec (JSON, see reporting_pipeline.local.seed.SeedSpec) whose files to load")
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")  # the stand-in checks no signature
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    _serve_s3(args)


if __name__ == "__main__":
    main()
