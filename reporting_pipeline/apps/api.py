"""Subscription API: subscribe, list, unsubscribe, and one-click unsubscribe from the email (RFC 8058).

Callers authenticate with a bearer JWT; the caller is the token's subject (the participant id).
Every refusal is a JSON error with a stable code; nothing is written before all checks pass.
"""


import html
import logging
from dataclasses import dataclass
from functools import cache
from typing import Annotated
from zoneinfo import available_timezones

import jwt
from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from pymongo.errors import ConnectionFailure
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from reporting_pipeline.settings import Settings, SettingsError
from reporting_pipeline.stages import subscribe as subs

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024
# Fail fast when MongoDB is gone: pymongo's default 30 s server selection outlasts any client's patience.
MONGO_TIMEOUT_MS = 2000
RETRY_AFTER_SECONDS = 5
NOSNIFF = {"X-Content-Type-Options": "nosniff"}
# The unsubscribe page: no scripts, no framing, no referrer carrying the token to other sites.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@cache
def iana_timezones() -> tuple[str, ...]:
    return tuple(sorted(available_timezones()))


@dataclass(frozen=True)
class JwtSettings:
    """How bearer tokens are verified: HS256 with a shared secret or RS256 with a public key."""

    key: str
    algorithm: str
    issuer: str
    audience: str

    @classmethod
    def from_settings(cls, settings: Settings) -> "JwtSettings":
        public_key, secret = settings.jwt_public_key, settings.jwt_secret
        if not (public_key or secret):
            raise SettingsError("JWT_PUBLIC_KEY (RS256, PEM) or JWT_SECRET (HS256) must be set")
        return cls(key=public_key or secret, algorithm="RS256" if public_key else "HS256",
                   issuer=settings.jwt_issuer, audience=settings.jwt_audience)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    # nosniff here too: a 500 leaves through Starlette's outermost middleware, past SecurityHeaders.
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers={**NOSNIFF, **(headers or {})})


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable reason", examples=["unknown_trial"])
    message: str = Field(description="human-readable; never contains the values sent")


class ErrorBody(BaseModel):
    """Every error the API sends."""

    error: ErrorDetail


_ERROR_DESCRIPTIONS = {
    400: "malformed_json",
    401: "missing_token, token_expired, invalid_token, wrong_audience, wrong_issuer",
    403: "not_enrolled, enrollment_not_active, no_consent",
    404: "unknown_trial, subscription_not_found, invalid_unsubscribe_token",
    413: "body_too_large",
    422: "invalid_request, invalid_timezone",
    503: "unavailable: the database cannot be reached; retry after Retry-After seconds",
}


def _errors(*statuses: int) -> dict:
    # The schema by reference, not `model`: FastAPI would give a route's errors its success media type
    # (text/html on the unsubscribe page), and errors are always JSON. ErrorBody is put in the components
    # by create_app.
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    documented = {}
    for status in statuses:
        documented[status] = {"content": content, "description": _ERROR_DESCRIPTIONS[status]}
        if status == 401:
            documented[status]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        if status == 503:
            documented[status]["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    return documented


class SubscribeRequest(BaseModel):
    """Body of POST /v1/subscriptions. The email is taken from the enrollment, never from here."""

    model_config = ConfigDict(extra="forbid")
    trial_id: str = Field(min_length=1, max_length=100)
    timezone: str | None = Field(
        default=None, max_length=64, description="IANA time zone name", examples=["Europe/Berlin"],
        # Checked by the handler (422 invalid_timezone), not by pydantic (which would say invalid_request).
        json_schema_extra=lambda schema: schema["anyOf"][0].update(enum=list(iana_timezones())))


class Subscription(BaseModel):
    id: str
    trial_id: str
    status: str
    timezone: str | None = None


class Status(BaseModel):
    status: str


def _public(doc: dict) -> Subscription:
    return Subscription(id=doc["_id"], trial_id=doc["trial_id"], status=doc["status"], timezone=doc.get("timezone"))


class BodyLimit:
    """Refuses request bodies over MAX_BODY_BYTES, declared or chunked, with 413 before the app sees them.

    The body is read here (at most MAX_BODY_BYTES are held) and replayed to the app: refusing from inside
    the app's receive would surface as FastAPI's generic 400 "error parsing the body".
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = _error(413, "body_too_large", f"request body over {MAX_BODY_BYTES} bytes")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            return await too_large(scope, receive, send)
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > MAX_BODY_BYTES:
                return await too_large(scope, receive, send)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # waits for http.disconnect, as Starlette expects
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


class SecurityHeaders:
    """nosniff everywhere; no caching of anything under /v1/ (personal data, unsubscribe tokens in URLs)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        private = scope["path"].startswith("/v1/")

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if private:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, with_headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path: Starlette's own Allow names only the first route's."""
    methods = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE and getattr(route, "methods", None):
            methods |= route.methods
    return ", ".join(sorted(methods))


def create_app(get_db, jwt_settings: JwtSettings, *, docs: bool = False) -> FastAPI:
    """The API over a database returned by `get_db()`; `docs` serves /docs and /redoc (they load a CDN's scripts)."""
    app = FastAPI(title="Weekly trial reports: subscriptions", version="1",
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  swagger_ui_oauth2_redirect_url="/docs/oauth2-redirect" if docs else None)
    app.add_middleware(BodyLimit)
    app.add_middleware(SecurityHeaders)  # added last: outermost, so it also marks BodyLimit's 413

    default_openapi = app.openapi

    def openapi() -> dict:
        """FastAPI's document without its 422 `{"detail": [...]}`: this app never sends that body."""
        if app.openapi_schema is None:
            schema = default_openapi()
            for operations in schema["paths"].values():
                for operation in operations.values():
                    if "HTTPValidationError" in str(operation["responses"].get("422", "")):
                        del operation["responses"]["422"]
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            error_body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(error_body.pop("$defs"), ErrorBody=error_body)
        return app.openapi_schema

    app.openapi = openapi

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError):
        return _error(error.status, error.code, error.message, error.headers)

    @app.exception_handler(subs.SubscriptionError)
    async def subscription_error(_: Request, error: subs.SubscriptionError):
        return _error(error.http_status, error.code, str(error))

    @app.exception_handler(ConnectionFailure)
    async def database_unavailable(request: Request, error: ConnectionFailure):
        # One line, no traceback; the route's template, never the path (it may hold an unsubscribe token).
        route = getattr(request.scope.get("route"), "path", "?")
        log.warning("MongoDB unavailable (%s) on %s %s", type(error).__name__, request.method, route)
        return _error(503, "unavailable", "the service is temporarily unavailable",
                      {"Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError):
        problems = error.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return _error(400, "malformed_json", "request body is not valid JSON")

        # Field names and reasons only: echoing the input could echo data we should not log.
        def describe(p):
            if p.get("type") == "extra_forbidden":
                return "unknown field"  # its name is input too
            return f"{'.'.join(str(x) for x in p['loc'][1:]) or 'body'}: {p['msg']}"

        return _error(422, "invalid_request", "; ".join(describe(p) for p in problems))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        headers = dict(error.headers or {})
        if error.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return _error(error.status_code, code, str(error.detail), headers)

    bearer = HTTPBearer(bearerFormat="JWT", auto_error=False, description="JWT whose subject is the participant id")

    def caller(credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> str:
        """The participant id the bearer token was issued to."""
        challenge = {"WWW-Authenticate": 'Bearer realm="trial-reports"'}
        if credentials is None or not credentials.credentials:
            raise ApiError(401, "missing_token", "a bearer token is required", challenge)
        try:
            claims = jwt.decode(credentials.credentials, jwt_settings.key, algorithms=[jwt_settings.algorithm],
                                audience=jwt_settings.audience, issuer=jwt_settings.issuer,
                                options={"require": ["exp", "sub", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise ApiError(401, "token_expired", "the token has expired", challenge) from None
        except jwt.InvalidAudienceError:
            raise ApiError(401, "wrong_audience", "the token is not meant for this service", challenge) from None
        except jwt.InvalidIssuerError:
            raise ApiError(401, "wrong_issuer", "the token comes from an unknown issuer", challenge) from None
        except jwt.InvalidTokenError:
            raise ApiError(401, "invalid_token", "the token is malformed or its signature is wrong", challenge) from None
        return str(claims["sub"])

    Caller = Annotated[str, Depends(caller)]

    @app.get("/healthz", response_model=Status, summary="Liveness")
    def healthz():
        """The process is up; says nothing about MongoDB (see /readyz)."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=Status, summary="Readiness", responses=_errors(503))
    def readyz():
        """MongoDB answers a ping within the client's short server-selection timeout."""
        get_db().command("ping")
        return {"status": "ok"}

    # Load balancers probe with HEAD; HTTP servers strip the body. Left out of the schema: HEAD goes with GET.
    app.head("/healthz", include_in_schema=False)(healthz)
    app.head("/readyz", include_in_schema=False)(readyz)

    @app.post("/v1/subscriptions", response_model=Subscription, status_code=201,
              responses={200: {"model": Subscription, "description": "already subscribed: the existing one"},
                         **_errors(400, 401, 403, 404, 413, 422, 503)})
    def create_subscription(body: SubscribeRequest, participant_id: Caller):
        # The documented enum, exactly: ZoneInfo alone also takes names outside it (e.g. "posixrules").
        if body.timezone is not None and body.timezone not in iana_timezones():
            raise subs.InvalidTimezone("unknown timezone: use an IANA name such as Europe/Berlin")
        doc, created = subs.subscribe(get_db(), body.trial_id, participant_id, timezone=body.timezone)
        return JSONResponse(_public(doc).model_dump(), status_code=201 if created else 200)

    @app.get("/v1/subscriptions", response_model=list[Subscription], responses=_errors(401, 503))
    def my_subscriptions(participant_id: Caller):
        return [_public(d) for d in subs.list_subscriptions(get_db(), participant_id=participant_id)]

    @app.delete("/v1/subscriptions/{subscription_id}", response_model=Subscription,
                responses=_errors(401, 404, 503))
    def delete_subscription(subscription_id: str, participant_id: Caller):
        return _public(subs.unsubscribe(get_db(), subscription_id, participant_id=participant_id))

    @app.get("/v1/unsubscribe/{token}", response_class=HTMLResponse, responses=_errors(404, 503))
    def confirm_unsubscribe(token: str):
        # A GET never unsubscribes: mail scanners follow links. It asks for a click that POSTs.
        subs.subscription_for_token(get_db(), token)
        action = html.escape(f"/v1/unsubscribe/{token}", quote=True)
        return HTMLResponse(
            "<!doctype html><html><head><meta charset='utf-8'><title>Unsubscribe</title></head><body>"
            "<h1>Stop weekly report emails?</h1>"
            f"<form method='post' action='{action}'><button type='submit'>Unsubscribe</button></form>"
            "</body></html>", headers=PAGE_HEADERS)

    @app.post("/v1/unsubscribe/{token}", response_model=Status, responses=_errors(404, 413, 503))
    def one_click_unsubscribe(token: str):
        subs.unsubscribe_with_token(get_db(), token)
        return {"status": "unsubscribed"}

    return app


def mongo_client(uri: str):
    """The API's MongoDB client: the pipeline's, but giving up on an unreachable server after MONGO_TIMEOUT_MS
    (a request should fail fast, not wait as long as a step would)."""
    from reporting_pipeline.services import mongo

    return mongo.connect(uri, MONGO_TIMEOUT_MS)


def build_app(settings: Settings, *, docs: bool = False) -> FastAPI:
    """The app of a deployment (MONGODB_URI, MONGODB_DATABASE, JWT_*).

    MongoDB is first touched by a request, not here: the process starts and answers /healthz while it is down.
    """
    from reporting_pipeline.services import mongo

    jwt_settings = JwtSettings.from_settings(settings)
    db = mongo_client(settings.mongodb_uri)[settings.mongodb_database]
    indexed = False

    def get_db():
        nonlocal indexed
        if not indexed:  # until it succeeds once; racing requests may both create them, which is harmless
            mongo.ensure_indexes(db)
            indexed = True
        return db

    return create_app(get_db, jwt_settings, docs=docs)
