"""Retries for transient failures, in one place and at one layer: around each subscriber's unit of work.

Why here: a step handles thousands of subscribers, so one flaky call must not fail (and redo) the
whole step. The client libraries' own retries are switched off (botocore max attempts 1, pymongo
retryable reads/writes off) so attempts never multiply. A failure outside any subscriber's unit (the
subscription cursor, an outage tripping the breaker) fails the step, and Dagster's step RetryPolicy takes it from there.
"""

from __future__ import annotations

import random
import smtplib
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

T = TypeVar("T")

_S3_TRANSIENT_CODES = {
    "InternalError", "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
    "RequestLimitExceeded", "TooManyRequestsException",
}


class CarriedFailure(Exception):
    """A failure from a worker process as plain data: many client errors (botocore's among them) do not pickle."""

    def __init__(self, error_class: str, code: str, message: str, transient: bool, attempts: int = 1):
        super().__init__(message)
        self.error_class, self.code, self.transient, self.attempts = error_class, code, transient, attempts

    def __reduce__(self):
        return type(self), (self.error_class, self.code, str(self), self.transient, self.attempts)


def is_transient(error: BaseException) -> bool:
    """True for failures that may pass on their own: network, throttling, 5xx from S3, 4xx from SMTP."""
    if isinstance(error, CarriedFailure):
        return error.transient
    if is_pymongo_error(error, "AutoReconnect", "ConnectionFailure", "NetworkTimeout"):  # NotPrimary: AutoReconnect
        return True
    if isinstance(error, (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError)):
        return True
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or status == 429 or error.response.get("Error", {}).get("Code") in _S3_TRANSIENT_CODES
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return all(400 <= code < 500 for code, _ in error.recipients.values())
    if isinstance(error, smtplib.SMTPResponseException):
        return 400 <= error.smtp_code < 500
    if isinstance(error, (smtplib.SMTPServerDisconnected, ConnectionError, socket.timeout, TimeoutError)):
        return True
    return False


def is_pymongo_error(error: BaseException, *names: str) -> bool:
    """Whether `error` is one of pymongo's errors `names` (any of them if none is named).

    Report workers never load pymongo (services/mongo.py says why): where it is not loaded, no error is its.
    """
    errors = sys.modules.get("pymongo.errors")
    return errors is not None and isinstance(error, tuple(getattr(errors, n) for n in names or ("PyMongoError",)))


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter: sleep uniform(0, min(cap, base * 2**n))."""

    attempts: int = 5
    base: float = 0.5
    cap: float = 30.0

    @classmethod
    def from_settings(cls, settings) -> "Backoff":
        return cls(settings.retry_attempts, settings.retry_base_seconds, settings.retry_cap_seconds)

    def delay(self, retry_number: int, rng: Callable[[], float] = random.random) -> float:
        return rng() * min(self.cap, self.base * 2 ** retry_number)


_default = Backoff()


def configure(backoff: Backoff) -> None:
    """Set this process's backoff (from the deployment's settings): the run and its workers call this at start."""
    global _default
    _default = backoff


def call_with_retry(fn: Callable[[], T], backoff: Backoff | None = None, *, sleep=time.sleep,
                    on_retry: Callable[[int, BaseException], None] | None = None) -> T:
    """Call `fn`; retry transient failures with backoff; re-raise the last error with `.attempts` set."""
    backoff = backoff or _default
    for attempt in range(1, backoff.attempts + 1):
        try:
            return fn()
        except Exception as error:
            error.attempts = attempt  # read by dead letters and fault-injection figures
            if attempt >= backoff.attempts or not is_transient(error):
                raise
            if on_retry:
                on_retry(attempt, error)
            sleep(backoff.delay(attempt - 1))
    raise AssertionError("unreachable")


class SystemicFailure(Exception):
    """Several subscribers in a row failed for a transient reason: the dependency is down, not the data."""


class Breaker:
    """Fails the step once `limit` subscribers in a row exhausted their retries on transient errors.

    Without it an outage would turn every remaining subscriber of the shard into a dead letter; failing
    the step instead lets the step retry policy (and the redrive sensor) try the shard again later.
    """

    def __init__(self, limit: int = 3):
        self.limit = limit
        self.in_a_row = 0

    def failed(self, error: BaseException) -> None:
        if not is_transient(error):
            self.in_a_row = 0
            return
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise SystemicFailure(
                f"{self.in_a_row} subscribers in a row failed with {type(error).__name__}; stopping this step"
            ) from error

    def succeeded(self) -> None:
        self.in_a_row = 0


def captured(fn: Callable[..., T], *args) -> T | Exception:
    """`fn(*args)`, or the exception it raised: lets a pool's map finish while one item fails."""
    try:
        return fn(*args)
    except Exception as error:
        return error
