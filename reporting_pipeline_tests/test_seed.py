"""Seed data: what the local stand-ins load in-process is exactly what the production write path writes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from reporting_pipeline.local.seed import SeedSpec, seed
from reporting_pipeline.services import mongo
from reporting_pipeline.services.objectstore import make_client

from .conftest import NOW

COLLECTIONS = (mongo.TRIALS, mongo.ENROLLMENTS, mongo.SUBSCRIPTIONS, mongo.RECORDS, mongo.FILES)


class Standin:
    """A stand-in server process started as `reporting-pipeline dev` starts it: `READY <host> <port>` when loaded."""

    def __init__(self, *argv: str):
        self.process = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE, text=True)
        words = (self.process.stdout.readline() or "").split()
        if len(words) != 3 or words[0] != "READY":
            self.process.kill()
            pytest.fail(f"{argv[0]} did not start")
        self.port = int(words[2])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def documents(db) -> dict[str, list[dict]]:
    return {name: sorted(db[name].find(), key=lambda d: str(d["_id"])) for name in COLLECTIONS}


def objects(s3, bucket: str) -> dict[str, tuple]:
    """Every object under files/ as a client reads it: bytes, content type, metadata and encryption."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="files/"):
        for item in page.get("Contents", []):
            got = s3.get_object(Bucket=bucket, Key=item["Key"])
            out[item["Key"]] = (got["Body"].read(), got["ContentType"], got["Metadata"], got.get("ServerSideEncryption"))
    return out


@pytest.mark.skipif(sys.version_info < (3, 13), reason="mongoeco's wire server needs Python >= 3.13")
def test_the_stand_ins_load_what_the_production_write_path_writes(pipeline):
    spec = SeedSpec(subscribers=7, weeks=2, timezone="Europe/Berlin", now=NOW.isoformat())
    written = seed(pipeline.db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=spec.subscribers,
                   weeks=spec.weeks, timezone=spec.timezone, now=NOW)
    assert written.files > 7 and written.records > 7 * 2 * 10

    mongo_server = Standin("reporting_pipeline.local.wire_mongo", "--seed", spec.to_json())
    s3_server = Standin("reporting_pipeline.local.embedded", "s3", "--bucket", "clinical-reports", "--seed", spec.to_json())
    try:
        loaded_db = mongo.connect(f"mongodb://127.0.0.1:{mongo_server.port}/?directConnection=true")["reporting"]
        loaded_s3 = make_client(f"http://127.0.0.1:{s3_server.port}")
        expected, loaded = documents(pipeline.db), documents(loaded_db)
        assert {n: len(d) for n, d in loaded.items()} == {n: len(d) for n, d in expected.items()}
        assert loaded == expected
        assert sorted(loaded_db[mongo.RECORDS].index_information()) == sorted(
            pipeline.db[mongo.RECORDS].index_information())
        expected_objects = objects(pipeline.s3, pipeline.bucket)
        assert len(expected_objects) == written.files
        assert objects(loaded_s3, "clinical-reports") == expected_objects
        encryption = loaded_s3.get_bucket_encryption(Bucket="clinical-reports")["ServerSideEncryptionConfiguration"]
        assert encryption["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    finally:
        mongo_server.stop()
        s3_server.stop()


def test_seeding_twice_adds_nothing(pipeline):
    for _ in range(2):
        seed(pipeline.db, pipeline.s3, pipeline.bucket, pipeline.encryption, subscribers=3, weeks=1, now=NOW)
    counts = {name: pipeline.db[name].count_documents({}) for name in COLLECTIONS}
    assert counts[mongo.SUBSCRIPTIONS] == counts[mongo.ENROLLMENTS] == 3
    assert len(objects(pipeline.s3, pipeline.bucket)) == counts[mongo.FILES] > 0


def test_the_s3_stand_in_keeps_a_connection_open_request_after_request_as_s3_does():
    """Clients reuse connections (S3 keeps them open). Over one socket, as a client sends them: every response
    is whole and the next request answered, after refusals, HEADs (no body) and chunked uploads too."""
    from http.client import HTTPConnection

    from reporting_pipeline.local.embedded import S3Server

    with S3Server() as server:
        connection = HTTPConnection("127.0.0.1", server.server.server_port, timeout=30)

        def send(method: str, path: str, body=None, **headers) -> tuple[int, dict, bytes]:
            connection.request(method, path, body=body, headers=headers,
                               encode_chunked=headers.get("Transfer-Encoding") == "chunked")
            response = connection.getresponse()
            data = response.read()
            assert not response.will_close, f"{method} {path}: the server closed the connection"
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data

        assert send("PUT", "/keep-alive-bucket")[0] == 200
        connection.connect()  # from here on, one socket
        socket = connection.sock
        public = {"x-amz-acl": "public-read"}  # unsigned GETs may read it
        assert send("PUT", "/keep-alive-bucket/note.txt", b"hello", **public)[0] == 200
        assert send("PUT", "/no-such-bucket/big.bin", b"x" * 200_000)[0] == 404
        assert send("GET", "/keep-alive-bucket/note.txt")[2] == b"hello"
        status, headers, body = send("HEAD", "/keep-alive-bucket/note.txt")
        assert (status, headers["content-length"], body) == (200, "5", b"")
        chunked = {"Transfer-Encoding": "chunked", **public}
        assert send("PUT", "/keep-alive-bucket/parts.txt", iter([b"ab", b"cd"]), **chunked)[0] == 200
        assert send("GET", "/keep-alive-bucket/parts.txt")[2] == b"abcd"
        assert send("GET", "/keep-alive-bucket/missing.txt")[0] == 404
        assert send("GET", "/keep-alive-bucket/note.txt")[2] == b"hello"
        assert connection.sock is socket  # http.client reconnects silently if the server closed it
        connection.close()
