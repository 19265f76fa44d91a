from datetime import UTC, datetime, timedelta
from email import message_from_string
from email.policy import default as default_policy

import mongomock
import pytest

from reporting_pipeline import mongo
from reporting_pipeline.errors import InvalidEmailAddress
from reporting_pipeline.notify import (
    SUBJECT, claim_delivery, complete_delivery, compose_email, link_ttl, message_id, release_delivery, validate_email,
)
from reporting_pipeline.weeks import Week


@pytest.mark.parametrize("address", ["a@example.org", "first.last+tag@sub.example.co.uk"])
def test_valid_addresses_pass(address):
    assert validate_email(address, "sub_1") == address


@pytest.mark.parametrize("address", [
    "", None, "not-an-email", "a@b", "a@@example.org", "a b@example.org", "a@example..org", "a..b@example.org",
    "a@-example.org", "<a@example.org>", "a@example.org\nBcc: x@evil.org", "a@example.org\n",
])
def test_invalid_addresses_are_refused_without_echoing_them(address):
    with pytest.raises(InvalidEmailAddress) as info:
        validate_email(address, "sub_1")
    assert "sub_1" in str(info.value) and (not address or address not in str(info.value))


def test_link_lifetime_is_capped_at_seven_days():
    assert link_ttl(72) == timedelta(hours=72)
    with pytest.raises(ValueError):
        link_ttl(169)
    with pytest.raises(ValueError):
        link_ttl(0)


def test_email_carries_link_and_expiry_but_no_health_data():
    week = Week.from_key("2026-11-16", "UTC")
    msg = compose_email(to="a@example.org", email_from="reports@example.org", link="https://s3/x?X-Amz-Expires=1",
                        expires_at=datetime(2026, 11, 30, 9, 0, tzinfo=UTC), week=week,
                        msg_id=message_id("sub_1", week.key, "reports@example.org"), unsubscribe_url="https://u")
    parsed = message_from_string(msg.as_string(), policy=default_policy)
    body = parsed.get_body(("plain",)).get_content()
    assert parsed["Subject"] == SUBJECT
    assert "https://s3/x?X-Amz-Expires=1" in body and "30 Nov 2026 at 09:00 UTC" in body
    assert "https://u" in body
    assert parsed["Message-ID"] == message_id("sub_1", week.key, "reports@example.org")
    assert parsed["Message-ID"].endswith("@example.org>")


def test_claim_is_exclusive_until_the_lease_expires_and_final_once_sent():
    db = mongomock.MongoClient(tz_aware=True).db
    mongo.ensure_indexes(db)
    lease = timedelta(minutes=5)
    assert claim_delivery(db, "sub_1", "2026-11-16", "run-a", lease)
    assert not claim_delivery(db, "sub_1", "2026-11-16", "run-b", lease)  # held by run-a
    release_delivery(db, "sub_1", "2026-11-16", "run-a")  # send failed: claimable at once
    assert claim_delivery(db, "sub_1", "2026-11-16", "run-b", lease)
    # run-b dies mid-send; after its lease runs out run-c may take over
    db[mongo.DELIVERIES].update_one({"_id": "sub_1:2026-11-16"},
                                    {"$set": {"lease_expires_at": datetime.now(UTC) - timedelta(seconds=1)}})
    assert claim_delivery(db, "sub_1", "2026-11-16", "run-c", lease)
    complete_delivery(db, "sub_1", "2026-11-16", "run-c", {"sha256": "abc", "s3_key": "k"}, "<m@x>")
    db[mongo.DELIVERIES].update_one({"_id": "sub_1:2026-11-16"},
                                    {"$set": {"lease_expires_at": datetime.now(UTC) - timedelta(days=1)}})
    assert not claim_delivery(db, "sub_1", "2026-11-16", "run-d", lease)  # sent is final
    doc = db[mongo.DELIVERIES].find_one({"_id": "sub_1:2026-11-16"})
    assert doc["status"] == "sent" and doc["owner"] == "run-c" and doc["attempts"] == 3
    assert db["delivery_audit"].count_documents({"subscription_id": "sub_1"}) == 1


def test_a_link_never_outlives_the_report_it_points_to():
    from reporting_pipeline.notify import ReportExpiring, _link_lifetime

    now = datetime.now(UTC)
    fresh = {"subscription_id": "sub_1", "rendered_at": now - timedelta(days=1)}
    assert _link_lifetime(fresh, timedelta(hours=72), retention_days=90) == timedelta(hours=72)
    old = {"subscription_id": "sub_1", "rendered_at": now - timedelta(days=89, hours=12)}
    lifetime = _link_lifetime(old, timedelta(hours=72), retention_days=90)
    assert timedelta(hours=11, minutes=59) < lifetime <= timedelta(hours=12)
    expiring = {"subscription_id": "sub_1", "rendered_at": now - timedelta(days=89, hours=23, minutes=30)}
    with pytest.raises(ReportExpiring):
        _link_lifetime(expiring, timedelta(hours=72), retention_days=90)
