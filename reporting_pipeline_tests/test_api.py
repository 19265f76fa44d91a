"""The subscription API over HTTP (FastAPI's TestClient), MongoDB through pymongo's API (mongomock).

What TestClient would hide (raw bytes, chunked bodies, HEAD) is in test_api_http.py.
"""

import time
from datetime import UTC, datetime

import jwt
import mongomock
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from reporting_pipeline.apps.api import JwtSettings, create_app
from reporting_pipeline.services import mongo
from reporting_pipeline.stages.subscribe import issue_unsubscribe_token, subscription_id

SECRET = "test-secret-with-enough-entropy-0123456789"
ISSUER, AUDIENCE = "https://auth.example.org/", "trial-reports"


def token(sub="P-001", *, key=SECRET, algorithm="HS256", iss=ISSUER, aud=AUDIENCE, exp_in=300, **extra):
    claims = {"sub": sub, "iss": iss, "aud": aud, "exp": int(time.time()) + exp_in, **extra}
    return jwt.encode(claims, key, algorithm=algorithm)


def auth(value=None, **kwargs):
    return {"Authorization": f"Bearer {value or token(**kwargs)}"}


@pytest.fixture
def db():
    database = mongomock.MongoClient(tz_aware=True).db
    mongo.ensure_indexes(database)
    database[mongo.TRIALS].insert_many([{"_id": "T1", "name": "Trial one"}, {"_id": "T2", "name": "Trial two"}])
    base = {"email": "p1@example.org", "status": "active", "consent_electronic_reports": True,
            "updated_at": datetime(2026, 1, 1, tzinfo=UTC)}
    database[mongo.ENROLLMENTS].insert_many([
        {**base, "_id": "e1", "trial_id": "T1", "participant_id": "P-001"},
        {**base, "_id": "e2", "trial_id": "T2", "participant_id": "P-001", "consent_electronic_reports": False},
        {**base, "_id": "e3", "trial_id": "T1", "participant_id": "P-002", "email": "p2@example.org",
         "status": "withdrawn"},
        {**base, "_id": "e4", "trial_id": "T1", "participant_id": "P-003", "email": "p3@example.org"},
    ])
    return database


@pytest.fixture
def client(db):
    return TestClient(create_app(lambda: db, JwtSettings(SECRET, "HS256", ISSUER, AUDIENCE)))


def error_code(response):
    return response.json()["error"]["code"]


def test_subscribe_is_idempotent_takes_the_email_from_the_enrollment_and_lists_only_mine(client, db):
    first = client.post("/v1/subscriptions", json={"trial_id": "T1", "timezone": "Europe/Berlin"}, headers=auth())
    assert first.status_code == 201
    body = first.json()
    assert body == {"id": subscription_id("T1", "P-001"), "trial_id": "T1", "status": "pending",
                    "timezone": "Europe/Berlin"}
    again = client.post("/v1/subscriptions", json={"trial_id": "T1"}, headers=auth())
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    assert db[mongo.SUBSCRIPTIONS].count_documents({}) == 1
    assert db[mongo.SUBSCRIPTIONS].find_one()["email"] == "p1@example.org"
    client.post("/v1/subscriptions", json={"trial_id": "T1"}, headers=auth(sub="P-003"))
    mine = client.get("/v1/subscriptions", headers=auth())
    assert [s["id"] for s in mine.json()] == [body["id"]]


def test_unsubscribe_own_and_not_someone_elses(client, db):
    mine = client.post("/v1/subscriptions", json={"trial_id": "T1"}, headers=auth()).json()["id"]
    theirs = client.post("/v1/subscriptions", json={"trial_id": "T1"}, headers=auth(sub="P-003")).json()["id"]
    refused = client.delete(f"/v1/subscriptions/{theirs}", headers=auth())
    assert refused.status_code == 404 and error_code(refused) == "subscription_not_found"
    assert db[mongo.SUBSCRIPTIONS].find_one({"_id": theirs})["status"] == "pending"
    done = client.delete(f"/v1/subscriptions/{mine}", headers=auth())
    assert done.status_code == 200 and done.json()["status"] == "unsubscribed"
    unknown = client.delete("/v1/subscriptions/sub_nope", headers=auth())
    assert unknown.status_code == 404


@pytest.mark.parametrize("body, status, code", [
    ({"trial_id": "T9"}, 404, "unknown_trial"),
    ({"trial_id": "T2"}, 403, "no_consent"),
    ({"trial_id": "T1", "email": "evil@example.org"}, 422, "invalid_request"),  # unknown field
    ({"trial_id": "T1", "timezone": "Mars/Olympus"}, 422, "invalid_timezone"),
    ({}, 422, "invalid_request"),
])
def test_bad_requests_get_specific_errors_and_write_nothing(client, db, body, status, code):
    response = client.post("/v1/subscriptions", json=body, headers=auth())
    assert response.status_code == status and error_code(response) == code
    assert db[mongo.SUBSCRIPTIONS].count_documents({}) == 0


@pytest.mark.parametrize("participant, status, code", [
    ("P-002", 403, "enrollment_not_active"),  # withdrawn
    ("P-404", 403, "not_enrolled"),
])
def test_enrollment_is_checked_before_anything_is_written(client, db, participant, status, code):
    response = client.post("/v1/subscriptions", json={"trial_id": "T1"}, headers=auth(sub=participant))
    assert response.status_code == status and error_code(response) == code
    assert db[mongo.SUBSCRIPTIONS].count_documents({}) == 0


def test_malformed_json_and_oversized_bodies(client, db):
    malformed = client.post("/v1/subscriptions", content=b'{"trial_id": "T1"', headers={
        **auth(), "Content-Type": "application/json"})
    assert malformed.status_code == 400 and error_code(malformed) == "malformed_json"
    huge = client.post("/v1/subscriptions", content=b'{"trial_id": "' + b"x" * 20000 + b'"}', headers={
        **auth(), "Content-Type": "application/json"})
    assert huge.status_code == 413 and error_code(huge) == "body_too_large"
    assert db[mongo.SUBSCRIPTIONS].count_documents({}) == 0


def rsa_keys():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


@pytest.mark.parametrize("headers, code", [
    ({}, "missing_token"),
    ({"Authorization": "Basic abc"}, "missing_token"),
    (lambda: auth(exp_in=-10), "token_expired"),
    (lambda: auth(aud="another-service"), "wrong_audience"),
    (lambda: auth(iss="https://evil.example.org/"), "wrong_issuer"),
    (lambda: auth(key="a-different-secret-of-the-same-length-000"), "invalid_token"),
    (lambda: auth("not.a.jwt"), "invalid_token"),
    (lambda: auth(algorithm="none", key=None), "invalid_token"),
])
def test_bad_tokens_are_refused(client, db, headers, code):
    response = client.post("/v1/subscriptions", json={"trial_id": "T1"}, headers=headers() if callable(headers) else headers)
    assert response.status_code == 401 and error_code(response) == code
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert db[mongo.SUBSCRIPTIONS].count_documents({}) == 0


def test_rs256_tokens_verified_with_the_public_key(db):
    private, public = rsa_keys()
    app = TestClient(create_app(lambda: db, JwtSettings(public, "RS256", ISSUER, AUDIENCE)))
    ok = app.post("/v1/subscriptions", json={"trial_id": "T1"}, headers=auth(key=private, algorithm="RS256"))
    assert ok.status_code == 201
    other_private, _ = rsa_keys()
    forged = app.get("/v1/subscriptions", headers=auth(key=other_private, algorithm="RS256"))
    assert forged.status_code == 401 and error_code(forged) == "invalid_token"
    # An HS256 token signed with the public key as secret (algorithm confusion) is refused.
    confused = app.get("/v1/subscriptions", headers=auth(hs256_signed_with(public)))
    assert confused.status_code == 401 and error_code(confused) == "invalid_token"


def hs256_signed_with(secret: str) -> str:
    """Built by hand: PyJWT itself refuses to use a PEM key as an HMAC secret."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    claims = {"sub": "P-001", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 300}
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def test_one_click_unsubscribe_get_confirms_post_unsubscribes(client, db):
    sub_id = client.post("/v1/subscriptions", json={"trial_id": "T1"}, headers=auth()).json()["id"]
    secret = issue_unsubscribe_token(db, sub_id)
    assert db["unsubscribe_tokens"].find_one({"_id": secret}) is None  # only a hash is stored
    page = client.get(f"/v1/unsubscribe/{secret}")
    assert page.status_code == 200 and "<form method='post'" in page.text
    assert db[mongo.SUBSCRIPTIONS].find_one({"_id": sub_id})["status"] == "pending"  # GET changed nothing
    done = client.post(f"/v1/unsubscribe/{secret}", data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200 and done.json() == {"status": "unsubscribed"}
    assert db[mongo.SUBSCRIPTIONS].find_one({"_id": sub_id})["status"] == "unsubscribed"
    assert client.post(f"/v1/unsubscribe/{secret}").status_code == 200  # a second POST is harmless


@pytest.mark.parametrize("bad", ["x" * 43, "short", "A" * 101])
def test_invalid_unsubscribe_tokens(client, bad):
    for method in (client.get, client.post):
        response = method(f"/v1/unsubscribe/{bad}")
        assert response.status_code == 404 and error_code(response) == "invalid_unsubscribe_token"


def test_health_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok"}
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/subscriptions", "/v1/subscriptions/{subscription_id}", "/v1/unsubscribe/{token}"} <= set(paths)


def test_openapi_documents_bearer_auth_and_the_errors_actually_sent(client):
    document = client.get("/openapi.json").json()
    components = document["components"]
    assert components["securitySchemes"] == {"HTTPBearer": {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "JWT whose subject is the participant id"}}
    assert "HTTPValidationError" not in components["schemas"]  # FastAPI's {"detail": [...]}, never sent
    assert components["schemas"]["ErrorBody"]["properties"]["error"] == {"$ref": "#/components/schemas/ErrorDetail"}
    assert set(components["schemas"]["ErrorDetail"]["required"]) == {"code", "message"}
    error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    expected = {
        ("post", "/v1/subscriptions"): {"400", "401", "403", "404", "413", "422", "503"},
        ("get", "/v1/subscriptions"): {"401", "503"},
        ("delete", "/v1/subscriptions/{subscription_id}"): {"401", "404", "503"},
        ("get", "/v1/unsubscribe/{token}"): {"404", "503"},
        ("post", "/v1/unsubscribe/{token}"): {"404", "413", "503"},
        ("get", "/readyz"): {"503"},
        ("get", "/healthz"): set(),
    }
    for (method, path), errors in expected.items():
        operation = document["paths"][path][method]
        assert {s for s in operation["responses"] if s >= "400"} == errors, (method, path)
        assert all(operation["responses"][s]["content"] == error_ref for s in errors)
        protected = path.startswith("/v1/subscriptions")
        assert operation.get("security") == ([{"HTTPBearer": []}] if protected else None), (method, path)
    assert document["paths"]["/readyz"]["get"]["responses"]["503"]["headers"]["Retry-After"]
    timezone = components["schemas"]["SubscribeRequest"]["properties"]["timezone"]
    assert timezone["description"] == "IANA time zone name" and timezone["examples"] == ["Europe/Berlin"]
    names = timezone["anyOf"][0]["enum"]
    assert "Europe/Berlin" in names and "Mars/Olympus" not in names and len(names) > 300


@pytest.mark.parametrize("body, code", [
    ({"trial_id": "P-001-secret-trial"}, "unknown_trial"),
    ({"trial_id": "T1", "timezone": "P-001-secret-zone"}, "invalid_timezone"),
    ({"trial_id": "T1", "P-001-secret-field": "x"}, "invalid_request"),
])
def test_error_messages_do_not_echo_the_input(client, body, code):
    response = client.post("/v1/subscriptions", json=body, headers=auth())
    assert error_code(response) == code
    assert b"secret" not in response.content and b"P-001" not in response.content


def test_timezone_outside_the_documented_names_is_invalid_timezone(client, db):
    # ZoneInfo loads "posixrules", but it is no IANA zone name and not in the documented enum.
    response = client.post("/v1/subscriptions", json={"trial_id": "T1", "timezone": "posixrules"}, headers=auth())
    assert response.status_code == 422 and error_code(response) == "invalid_timezone"
    assert db[mongo.SUBSCRIPTIONS].count_documents({}) == 0
