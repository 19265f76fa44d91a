import smtplib

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from pymongo.errors import AutoReconnect, DuplicateKeyError, NotPrimaryError, ServerSelectionTimeoutError

from reporting_pipeline.errors import CorruptImage
from reporting_pipeline.services.retry import Backoff, Breaker, SystemicFailure, call_with_retry, is_transient


def s3_error(status, code):
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize("error", [
    AutoReconnect("reset"), NotPrimaryError("stepped down"), ServerSelectionTimeoutError("no server"),
    s3_error(503, "SlowDown"), s3_error(500, "InternalError"), s3_error(400, "RequestTimeout"),
    EndpointConnectionError(endpoint_url="http://s3"), ConnectionResetError(), TimeoutError(),
    smtplib.SMTPResponseException(451, b"try later"), smtplib.SMTPServerDisconnected(),
    smtplib.SMTPRecipientsRefused({"a@example.org": (450, b"mailbox busy")}),
])
def test_transient_errors(error):
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    s3_error(404, "NoSuchKey"), s3_error(403, "AccessDenied"), DuplicateKeyError("dup"),
    smtplib.SMTPResponseException(550, b"no such user"),
    smtplib.SMTPRecipientsRefused({"a@example.org": (550, b"unknown")}), CorruptImage("bad", "f1"), ValueError("x"),
])
def test_permanent_errors(error):
    assert not is_transient(error)


def test_transient_failures_are_retried_up_to_the_cap_with_capped_full_jitter_backoff():
    calls, sleeps = [], []
    backoff = Backoff(attempts=5, base=1.0, cap=4.0)

    def flaky():
        calls.append(1)
        raise AutoReconnect("down")

    with pytest.raises(AutoReconnect) as info:
        call_with_retry(flaky, backoff, sleep=sleeps.append)
    assert len(calls) == 5 and info.value.attempts == 5
    assert len(sleeps) == 4 and all(0 <= s <= c for s, c in zip(sleeps, [1, 2, 4, 4]))
    print(f"retry: {len(calls)} attempts, sleeps {[round(s, 2) for s in sleeps]} (caps 1, 2, 4, 4)")


def test_a_transient_failure_that_clears_succeeds_and_permanent_ones_are_not_retried():
    outcomes = iter([s3_error(503, "SlowDown"), s3_error(503, "SlowDown"), None])

    def recovering():
        error = next(outcomes)
        if error:
            raise error
        return "ok"

    assert call_with_retry(recovering, Backoff(attempts=5, base=0), sleep=lambda s: None) == "ok"
    calls = []

    def permanent():
        calls.append(1)
        raise CorruptImage("bad", "f1")

    with pytest.raises(CorruptImage):
        call_with_retry(permanent, Backoff(attempts=5, base=0), sleep=lambda s: None)
    assert len(calls) == 1


def test_jitter_spreads_retries():
    delays = {round(Backoff(base=1.0, cap=8.0).delay(3), 6) for _ in range(50)}
    assert len(delays) > 40 and max(delays) <= 8.0


def test_breaker_trips_after_subscribers_in_a_row_fail_transiently_and_resets_on_success():
    breaker = Breaker(limit=3)
    breaker.failed(AutoReconnect("x"))
    breaker.failed(AutoReconnect("x"))
    breaker.succeeded()
    breaker.failed(AutoReconnect("x"))
    breaker.failed(CorruptImage("bad", "f"))  # bad data is not an outage
    breaker.failed(AutoReconnect("x"))
    breaker.failed(AutoReconnect("x"))
    with pytest.raises(SystemicFailure, match="3 subscribers in a row"):
        breaker.failed(AutoReconnect("x"))
