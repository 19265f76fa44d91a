"""Subscription API: subscribe, list, unsubscribe, and one-click unsubscribe from the email (RFC 8058).

Callers authenticate with a bearer JWT; the caller is the token's subject (the participant id).
Every refusal is a JSON error with a stable code; nothing is written before all checks pass.
"""


import html
from dataclasses import dataclass
from typing import Annotated

import jwt
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import subscribe as subs
from .settings import Settings, SettingsError

MAX_BODY_BYTES = 16 * 1024


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
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class SubscribeRequest(BaseModel):
    """Body of POST /v1/subscriptions. The email is taken from the enrollment, never from here."""

    model_config = ConfigDict(extra="forbid")
    trial_id: str = Field(min_length=1, max_length=100)
    timezone: str | None = Field(default=None, max_length=64)


class Subscription(BaseModel):
    id: str
    trial_id: str
    status: str
    timezone: str | None = None


def _public(doc: dict) -> Subscription:
    return Subscription(id=doc["_id"], trial_id=doc["trial_id"], status=doc["status"], timezone=doc.get("timezone"))


class BodyLimit:
    """Refuses request bodies over MAX_BODY_BYTES before they are read into memory."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and int(declared or 0) > MAX_BODY_BYTES:
            return await _error(413, "body_too_large", f"request body over {MAX_BODY_BYTES} bytes")(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY_BYTES:
                raise ApiError(413, "body_too_large", f"request body over {MAX_BODY_BYTES} bytes")
            return message

        try:
            await self.app(scope, limited, send)
        except ApiError as error:
            await _error(error.status, error.code, error.message)(scope, receive, send)


def create_app(get_db, jwt_settings: JwtSettings) -> FastAPI:
    """The API over a database returned by `get_db()`."""
    app = FastAPI(title="Weekly trial reports: subscriptions", version="1")
    app.add_middleware(BodyLimit)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError):
        return _error(error.status, error.code, error.message, error.headers)

    @app.exception_handler(subs.SubscriptionError)
    async def subscription_error(_: Request, error: subs.SubscriptionError):
        return _error(error.http_status, error.code, str(error))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError):
        problems = error.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return _error(400, "malformed_json", "request body is not valid JSON")
        # Field names and reasons only: echoing the input could echo data we should not log.
        detail = "; ".join(f"{'.'.join(str(x) for x in p['loc'][1:]) or 'body'}: {p['msg']}" for p in problems)
        return _error(422, "invalid_request", detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException):
        return _error(error.status_code, "http_error", str(error.detail))

    def caller(request: Request) -> str:
        """The participant id the bearer token was issued to."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="trial-reports"'}
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "missing_token", "a bearer token is required", challenge)
        try:
            claims = jwt.decode(token, jwt_settings.key, algorithms=[jwt_settings.algorithm],
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

    @app.get("/healthz")
    def healthz():
        get_db().command("ping")
        return {"status": "ok"}

    @app.post("/v1/subscriptions", response_model=Subscription, status_code=201)
    def create_subscription(body: SubscribeRequest, participant_id: Caller):
        doc, created = subs.subscribe(get_db(), body.trial_id, participant_id, timezone=body.timezone)
        return JSONResponse(_public(doc).model_dump(), status_code=201 if created else 200)

    @app.get("/v1/subscriptions", response_model=list[Subscription])
    def my_subscriptions(participant_id: Caller):
        return [_public(d) for d in subs.list_subscriptions(get_db(), participant_id=participant_id)]

    @app.delete("/v1/subscriptions/{subscription_id}", response_model=Subscription)
    def delete_subscription(subscription_id: str, participant_id: Caller):
        return _public(subs.unsubscribe(get_db(), subscription_id, participant_id=participant_id))

    @app.get("/v1/unsubscribe/{token}", response_class=HTMLResponse)
    def confirm_unsubscribe(token: str):
        # A GET never unsubscribes: mail scanners follow links. It asks for a click that POSTs.
        subs.subscription_for_token(get_db(), token)
        action = html.escape(f"/v1/unsubscribe/{token}", quote=True)
        return HTMLResponse(
            "<!doctype html><html><head><meta charset='utf-8'><title>Unsubscribe</title></head><body>"
            "<h1>Stop weekly report emails?</h1>"
            f"<form method='post' action='{action}'><button type='submit'>Unsubscribe</button></form>"
            "</body></html>")

    @app.post("/v1/unsubscribe/{token}")
    def one_click_unsubscribe(token: str):
        subs.unsubscribe_with_token(get_db(), token)
        return {"status": "unsubscribed"}

    return app


def build_app(settings: Settings) -> FastAPI:
    """The app of a deployment (MONGODB_URI, MONGODB_DATABASE, JWT_*)."""
    from . import mongo

    jwt_settings = JwtSettings.from_settings(settings)
    db = mongo.connect(settings.mongodb_uri)[settings.mongodb_database]
    mongo.ensure_indexes(db)
    return create_app(lambda: db, jwt_settings)
