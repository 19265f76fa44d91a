"""The subscription API as bytes on the wire: a real uvicorn server on a loopback port, raw sockets.

TestClient hides what these check: chunked request bodies, HEAD, the exact headers sent.
"""

import logging
import socket
import threading
from contextlib import contextmanager

import mongomock
import pymongo
import pytest
import uvicorn

from reporting_pipeline.apps import api
from reporting_pipeline.apps.api import JwtSettings, create_app
from reporting_pipeline.services import mongo
from reporting_pipeline.settings import Settings
from reporting_pipeline.stages.subscribe import issue_unsubscribe_token, subscribe

from .test_api import AUDIENCE, ISSUER, SECRET, auth

JWT = JwtSettings(SECRET, "HS256", ISSUER, AUDIENCE)
# Port 9 (discard) on loopback: nothing listens, so connecting is refused at once.
DEAD_MONGO = "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300"


@contextmanager
def serving(app):
    """`app` under uvicorn on a free loopback port; yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):  # bounded wait for the server to listen
            if server.started:
                break
            thread.join(0.01)
        assert server.started, "uvicorn did not start"
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def exchange(port: int, request: bytes) -> tuple[bytes, dict, bytes]:
    """Send raw bytes, read until the server closes: (status line, headers with lower-cased names, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode()
    return status, headers, body


def request(method: str, path: str, headers: dict | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", "Connection: close",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def enrolled_database():
    """An in-process database with one trial and one consenting participant, P-001."""
    database = mongomock.MongoClient(tz_aware=True).db
    mongo.ensure_indexes(database)
    database[mongo.TRIALS].insert_one({"_id": "T1"})
    database[mongo.ENROLLMENTS].insert_one({"_id": "e1", "trial_id": "T1", "participant_id": "P-001",
                                            "email": "p1@example.org", "status": "active",
                                            "consent_electronic_reports": True})
    return database


@pytest.fixture
def db():
    return enrolled_database()


@pytest.fixture
def port(db):
    with serving(create_app(lambda: db, JWT)) as bound:
        yield bound


def test_chunked_body_over_the_limit_is_413_like_a_declared_one(port, db):
    chunk = b'{"trial_id": "' + b"x" * 8000
    body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (chunk, b"y" * 8000, b"z" * 8000)) + b"0\r\n\r\n"
    head = request("POST", "/v1/subscriptions", {**auth(), "Content-Type": "application/json",
                                                 "Transfer-Encoding": "chunked"})
    status, headers, payload = exchange(port, head + body)
    assert status.startswith(b"HTTP/1.1 413 ")  # reason phrase: "Content Too Large" per RFC 9110
    assert headers["content-type"] == "application/json"
    assert payload == b'{"error":{"code":"body_too_large","message":"request body over 16384 bytes"}}'
    assert db[mongo.SUBSCRIPTIONS].count_documents({}) == 0
    # A small chunked body still gets through.
    small = b'{"trial_id": "T1"}'
    status, _, payload = exchange(port, head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(small), small))
    assert status == b"HTTP/1.1 201 Created" and b'"trial_id":"T1"' in payload


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_head_probes_answer_200_without_a_body(port, path):
    status, headers, body = exchange(port, request("HEAD", path))
    assert status == b"HTTP/1.1 200 OK" and body == b""
    assert headers["x-content-type-options"] == "nosniff"


def test_405_names_every_method_of_the_path(port):
    status, headers, body = exchange(port, request("PUT", "/v1/subscriptions"))
    assert status == b"HTTP/1.1 405 Method Not Allowed"
    assert headers["allow"] == "GET, POST"
    assert body == b'{"error":{"code":"method_not_allowed","message":"Method Not Allowed"}}'
    status, headers, _ = exchange(port, request("DELETE", "/v1/unsubscribe/" + "a" * 43))
    assert status.startswith(b"HTTP/1.1 405") and headers["allow"] == "GET, POST"
    status, headers, _ = exchange(port, request("POST", "/healthz"))
    assert status.startswith(b"HTTP/1.1 405") and headers["allow"] == "GET, HEAD"


def test_security_headers(port, db):
    status, headers, _ = exchange(port, request("GET", "/v1/subscriptions", auth()))
    assert status == b"HTTP/1.1 200 OK"
    assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "no-store"
    # Errors too, including the 413 answered before the app.
    _, headers, _ = exchange(port, request("GET", "/v1/subscriptions"))
    assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "no-store"
    _, headers, _ = exchange(port, request("POST", "/v1/subscriptions", body=b"x" * 20000))
    assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "no-store"
    _, headers, _ = exchange(port, request("GET", "/healthz"))
    assert headers["x-content-type-options"] == "nosniff" and "cache-control" not in headers

    doc, _ = subscribe(db, "T1", "P-001")
    secret = issue_unsubscribe_token(db, doc["_id"])
    status, headers, page = exchange(port, request("GET", f"/v1/unsubscribe/{secret}"))
    assert status == b"HTTP/1.1 200 OK" and headers["content-type"] == "text/html; charset=utf-8"
    assert b"style" not in page and b"<script" not in page  # nothing the policy would have to allow
    assert headers["content-security-policy"] == (
        "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-store" and headers["x-content-type-options"] == "nosniff"


def test_docs_ui_only_when_enabled(db):
    from fastapi.testclient import TestClient

    plain = TestClient(create_app(lambda: db, JWT))
    assert plain.get("/docs").status_code == 404 and plain.get("/redoc").status_code == 404
    assert plain.get("/openapi.json").status_code == 200
    assert TestClient(create_app(lambda: db, JWT, docs=True)).get("/docs").status_code == 200


def test_api_client_gives_up_on_mongodb_quickly_and_build_app_does_not_touch_it():
    client = api.mongo_client("mongodb://127.0.0.1:9/")
    assert client.options.server_selection_timeout == api.MONGO_TIMEOUT_MS / 1000 <= 2
    assert client.options.pool_options.connect_timeout == api.MONGO_TIMEOUT_MS / 1000
    client.close()
    own = api.mongo_client(DEAD_MONGO)  # the URI's own option wins
    assert own.options.server_selection_timeout == 0.3
    own.close()
    # Would raise ServerSelectionTimeoutError if it created the indexes at start.
    app = api.build_app(Settings(mongodb_uri=DEAD_MONGO, jwt_secret=SECRET))
    with serving(app) as port:
        status, _, body = exchange(port, request("GET", "/healthz"))
        assert status == b"HTTP/1.1 200 OK" and body == b'{"status":"ok"}'
        status, headers, body = exchange(port, request("GET", "/v1/subscriptions", auth()))
        assert status == b"HTTP/1.1 503 Service Unavailable" and headers["retry-after"] == "5"
        assert body == b'{"error":{"code":"unavailable","message":"the service is temporarily unavailable"}}'


@pytest.fixture
def dead_mongo():
    client = pymongo.MongoClient(DEAD_MONGO)
    assert client.options.server_selection_timeout == 0.3
    yield client
    client.close()


def test_unreachable_mongodb_is_503_json_on_every_route_and_liveness_stays_up(dead_mongo, caplog):
    app = create_app(lambda: dead_mongo.reporting, JWT)
    unsubscribe_path = "/v1/unsubscribe/" + "a" * 43
    calls = [("GET", "/readyz", {}), ("HEAD", "/readyz", {}), ("GET", "/v1/subscriptions", auth()),
             ("POST", "/v1/subscriptions", {**auth(), "Content-Type": "application/json"}),
             ("DELETE", "/v1/subscriptions/sub_x", auth()), ("GET", unsubscribe_path, {}),
             ("POST", unsubscribe_path, {})]
    with serving(app) as port, caplog.at_level(logging.WARNING):
        for method, path, headers in calls:
            body = b'{"trial_id": "T1"}' if method == "POST" and path == "/v1/subscriptions" else b""
            status, got, payload = exchange(port, request(method, path, headers, body))
            assert status == b"HTTP/1.1 503 Service Unavailable", (method, path)
            assert got["retry-after"] == "5" and got["content-type"] == "application/json"
            expected = b'{"error":{"code":"unavailable","message":"the service is temporarily unavailable"}}'
            assert payload == (b"" if method == "HEAD" else expected)
        for probe in ("GET", "HEAD"):
            status, _, _ = exchange(port, request(probe, "/healthz"))
            assert status == b"HTTP/1.1 200 OK"
    records = [r for r in caplog.records if r.name == "reporting_pipeline.apps.api"]
    assert len(records) == len(calls)  # one line per failure
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in records)
    assert not any("aaaa" in r.getMessage() or "P-001" in r.getMessage() for r in records)
    assert records[5].getMessage() == "MongoDB unavailable (ServerSelectionTimeoutError) on GET /v1/unsubscribe/{token}"
