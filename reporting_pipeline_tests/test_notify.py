import base64
import re
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, message_from_string
from email.header import decode_header, make_header
from email.policy import default as default_policy
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser

import dkim
import mongomock
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from reporting_pipeline.errors import InvalidEmailAddress
from reporting_pipeline.local.embedded import Outbox, SmtpServer
from reporting_pipeline.operations.dead_letters import record_dead_letter
from reporting_pipeline.services import mongo
from reporting_pipeline.services.dkim_sign import DkimConfigError, load_dkim_key
from reporting_pipeline.services.mail import (
    WIRE_POLICY,
    Pacer,
    SmtpSession,
    SmtpSettings,
    validate_email,
    wire_bytes,
)
from reporting_pipeline.stages.notify import (
    SUBJECT,
    claim_delivery,
    complete_delivery,
    compose_alert,
    compose_email,
    deliver_shard,
    link_ttl,
    message_id,
    release_delivery,
)
from reporting_pipeline.stages.subscribe import UNSUBSCRIBE_TOKENS, subscription_for_token
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
    assert "https://s3/x?X-Amz-Expires=1" in body and "Nov 30, 2026, 9:00\u202fAM UTC" in body
    assert "https://u" in body
    assert parsed["Message-ID"] == message_id("sub_1", week.key, "reports@example.org")
    assert parsed["Message-ID"].endswith("@example.org>")


WEEK = Week.from_key("2026-11-16", "UTC")
SENDER = "reports@trial-reports.example.org"
# A pre-signed S3 link as boto3 makes them: long, with '&' and '=' that HTML and QP must not mangle.
LINK = ("https://s3.eu-west-1.amazonaws.com/clinical-reports/reports/2026-11-16/s07/sub_1.pdf"
        "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20261128%2Feu-west-1%2Fs3%2Faws4_request"
        "&X-Amz-Date=20261128T120000Z&X-Amz-Expires=259200&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=" + "5d" * 32)
# Longer than 78 characters with no whitespace: what used to come out as encoded-words.
UNSUBSCRIBE = "https://api.trial-reports.example.org/v1/unsubscribe/" + "Zm9vYmFyLWJhei1xdXV4LXRva2VuLTQzLWNoYXJzXw"


def report_email(to="a@example.org", unsubscribe_url=UNSUBSCRIBE, link=LINK):
    return compose_email(to=to, email_from=SENDER, link=link, expires_at=datetime(2026, 11, 30, 9, 0, tzinfo=UTC),
                         week=WEEK, msg_id=message_id("sub_1", WEEK.key, SENDER), unsubscribe_url=unsubscribe_url)


@pytest.fixture
def smtp_server():
    with SmtpServer(Outbox()) as server:
        yield server


def received_bytes(server, *messages, **settings) -> list[bytes]:
    """Send through a real SMTP server and return what it received, byte for byte."""
    with SmtpSession(SmtpSettings("127.0.0.1", server.port, **settings)) as session:
        for message in messages:
            session.send(message)
    return server.handler.raw


def raw_headers(raw: bytes) -> dict[str, list[bytes]]:
    """Header fields as a receiving server reads them: unfolded, nothing decoded."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    fields = {}
    for line in re.sub(rb"\r\n(?=[ \t])", b"", head).split(b"\r\n"):
        name, _, value = line.partition(b":")
        fields.setdefault(name.decode().lower(), []).append(value.strip())
    return fields


def assert_wire_format(raw: bytes):
    assert raw.count(b"\n") == raw.count(b"\r\n") == raw.count(b"\r"), "CRLF line ends only"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


@pytest.mark.parametrize("unsubscribe_url", [UNSUBSCRIBE, "https://api.example.org/v1/unsubscribe/" + "t" * 900])
def test_list_unsubscribe_reaches_the_server_as_a_plain_uri(smtp_server, unsubscribe_url):
    [raw] = received_bytes(smtp_server, report_email(unsubscribe_url=unsubscribe_url))
    assert_wire_format(raw)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert f"\r\nList-Unsubscribe: <{unsubscribe_url}>\r\n".encode() in raw  # unencoded, on one line
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw
    assert b"=?" not in head  # no RFC 2047 encoded-word in any header
    fields = raw_headers(raw)
    assert fields["list-unsubscribe"] == [f"<{unsubscribe_url}>".encode()]
    assert fields["subject"] == [SUBJECT.encode()]
    assert fields["from"] == [SENDER.encode()] and fields["to"] == [b"a@example.org"]
    assert fields["message-id"] == [message_id("sub_1", WEEK.key, SENDER).encode()]
    assert fields["mime-version"] == [b"1.0"]
    [date] = fields["date"]
    assert re.fullmatch(rb"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000", date)
    assert abs(parsedate_to_datetime(date.decode()) - datetime.now(UTC)) < timedelta(minutes=5)


@pytest.mark.parametrize("url", [
    "https://api.example.org/v1/unsubscribe/a b", "https://api.example.org/v1/unsubscribe/\u00e9",
    "https://api.example.org/v1/unsubscribe/a>b", "https://api.example.org/=?utf-8?q?x?=",
    "https://api.example.org/" + "t" * 980,
])
def test_an_unsubscribe_url_that_cannot_go_out_verbatim_is_refused(url):
    with pytest.raises(ValueError, match="unsubscribe URL"):
        report_email(unsubscribe_url=url)


def test_an_alert_composed_elsewhere_goes_out_in_wire_format(smtp_server):
    # A subject token too long to fold at 78 characters, and two operators to reach.
    alert = compose_alert(to="ops@example.org, oncall@example.org", email_from=SENDER, job="report_delivery_job",
                          partition="2026-11-16|s07-" + "x" * 90, run_id="r1", attempts=3, reason="boom",
                          ui_url="https://dagster.example.org")
    [raw] = received_bytes(smtp_server, alert)
    assert_wire_format(raw)
    assert b"=?" not in raw.split(b"\r\n\r\n", 1)[0]
    assert smtp_server.handler.envelopes == [(SENDER, ["ops@example.org", "oncall@example.org"])]


class HtmlOutline(HTMLParser):
    """What a mail client acts on in an HTML part: its tags, link targets and language."""

    def __init__(self, html: str):
        super().__init__()
        self.tags, self.hrefs, self.lang = [], [], None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "a":
            self.hrefs.append(attrs.get("href"))
        if tag == "html":
            self.lang = attrs.get("lang")


def test_the_email_is_plain_text_with_an_html_alternative_carrying_the_same_links(smtp_server):
    [raw] = received_bytes(smtp_server, report_email())
    assert_wire_format(raw)
    message = message_from_bytes(raw, policy=default_policy)
    # Clients show the last alternative they can render, so plain text must come first.
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    plain = message.get_body(("plain",)).get_content()
    assert re.search(r"Download it here[^\n]*\n(\S+)", plain).group(1) == LINK
    html = message.get_body(("html",)).get_content()
    outline = HtmlOutline(html)
    assert outline.hrefs == [LINK, UNSUBSCRIBE]  # '&' escaped as '&amp;' in the source reads back exactly
    assert "&amp;X-Amz-Signature=" in html
    assert outline.lang == "en"
    # Nothing fetched on opening: no images (tracking pixels), scripts, frames or stylesheets.
    assert not {"img", "script", "iframe", "link", "object", "embed", "style"} & set(outline.tags)
    assert "Nov 30, 2026, 9:00\u202fAM UTC" in html and "Nov 16\u2009\u2013\u200922, 2026" in html


SELECTOR, DKIM_DOMAIN = "mail2026", "trial-reports.example.org"


@pytest.fixture(scope="module")
def dkim_key() -> tuple[str, bytes]:
    """A fresh RSA key as PEM text, and the TXT record that would publish its public half."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    public = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def dns_publishing(txt: bytes):
    """A DNS lookup answering only the selector's TXT record, as the receiver's resolver would."""
    def lookup(name: bytes, timeout=5):
        return txt if name == f"{SELECTOR}._domainkey.{DKIM_DOMAIN}.".encode() else None
    return lookup


def dkim_tags(raw: bytes) -> dict[str, str]:
    [value] = raw_headers(raw)["dkim-signature"]
    tags = (tag.split("=", 1) for tag in value.decode().split(";") if tag.strip())
    return {name.strip(): re.sub(r"\s+", "", val) for name, val in tags}


@pytest.mark.parametrize("key_as", ["pem", "path"])
def test_signed_email_verifies_as_received_and_covers_the_unsubscribe_headers(smtp_server, dkim_key, tmp_path,
                                                                                key_as):
    pem, txt = dkim_key
    if key_as == "path":
        (tmp_path / "dkim.pem").write_text(pem)
    key = pem if key_as == "pem" else str(tmp_path / "dkim.pem")
    [raw] = received_bytes(smtp_server, report_email(),
                           dkim_selector=SELECTOR, dkim_domain=DKIM_DOMAIN, dkim_private_key=key)
    assert_wire_format(raw)
    assert dkim.verify(raw, dnsfunc=dns_publishing(txt))
    tags = dkim_tags(raw)
    assert (tags["d"], tags["s"], tags["c"], tags["a"]) == (DKIM_DOMAIN, SELECTOR, "relaxed/relaxed", "rsa-sha256")
    assert {"from", "to", "subject", "date", "message-id", "mime-version", "content-type",
            "list-unsubscribe", "list-unsubscribe-post"} <= set(tags["h"].lower().split(":"))


@pytest.mark.parametrize("original, forged", [
    (b"List-Unsubscribe: <https://api.trial-reports.example.org/", b"List-Unsubscribe: <https://evil.example.com/"),
    (b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: List-Unsubscribe=Nope"),
    (b"Subject: Your weekly", b"Subject: Urgent: your weekly"),
    # The body's link (a prefix short enough to stay whole in a quoted-printable line).
    (b"https://s3.eu-west-1.amazonaws.com/clinical-reports/", b"https://s3.eu-west-1.amazonaws.com/evil-reports/"),
])
def test_changing_a_signed_part_breaks_the_signature(smtp_server, dkim_key, original, forged):
    pem, txt = dkim_key
    [raw] = received_bytes(smtp_server, report_email(),
                           dkim_selector=SELECTOR, dkim_domain=DKIM_DOMAIN, dkim_private_key=pem)
    assert original in raw
    assert not dkim.verify(raw.replace(original, forged), dnsfunc=dns_publishing(txt))


def test_a_pem_with_flattened_newlines_still_signs(dkim_key):
    pem, _ = dkim_key
    assert load_dkim_key(pem.replace("\n", "\\n")) == pem.encode()


@pytest.mark.parametrize("settings, names", [
    ({"dkim_private_key": "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"}, "dkim_private_key"),
    ({"dkim_private_key": "/nonexistent/dkim.pem"}, "dkim_private_key"),
    ({"dkim_domain": None}, "dkim_domain"),
    ({"dkim_selector": "bad selector"}, "dkim_selector"),
    ({"dkim_domain": "localhost"}, "dkim_domain"),
])
def test_an_unusable_dkim_setting_fails_at_construction_naming_it(dkim_key, settings, names):
    given = {"dkim_selector": SELECTOR, "dkim_domain": DKIM_DOMAIN, "dkim_private_key": dkim_key[0], **settings}
    with pytest.raises(DkimConfigError, match=names) as info:
        SmtpSettings("127.0.0.1", **given)
    assert "not a key" not in str(info.value)  # key material is never echoed


def test_a_key_receivers_would_ignore_is_refused():
    # Two known primes make a 511-bit key (cryptography no longer generates keys that short).
    p, q, e = 2**255 - 19, 2**256 - 189, 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    weak = rsa.RSAPrivateNumbers(p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
                                 rsa.RSAPublicNumbers(e, p * q)).private_key()
    pem = weak.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption()).decode()
    with pytest.raises(DkimConfigError, match="DKIM_PRIVATE_KEY: the RSA key has 511 bits"):
        load_dkim_key(pem, setting="DKIM_PRIVATE_KEY")


def test_the_dkim_key_stays_out_of_the_settings_repr(dkim_key):
    settings = SmtpSettings("127.0.0.1", dkim_selector=SELECTOR, dkim_domain=DKIM_DOMAIN, dkim_private_key=dkim_key[0])
    assert "PRIVATE" not in repr(settings) and SELECTOR in repr(settings)


class FakeClock:
    """Monotonic time that only moves when the test or a sleep moves it."""

    def __init__(self):
        self.now = 100.0
        self.slept = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class ClockedOutbox(Outbox):
    """Notes the fake time at which each message reached the server."""

    def __init__(self, clock: FakeClock):
        super().__init__()
        self.clock, self.received_at = clock, []

    async def handle_DATA(self, server, session, envelope):
        self.received_at.append(round(self.clock(), 6))
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def clocked_server():
    clock = FakeClock()
    with SmtpServer(ClockedOutbox(clock)) as server:
        yield server, clock


@pytest.mark.parametrize("rate, work_seconds, expected_at", [
    (2.0, 0.2, [100.2, 100.7, 101.2, 101.7]),  # composing is quicker than the cap: sends wait for it
    (2.0, 0.8, [100.8, 101.6, 102.4, 103.2]),  # slower than the cap: nobody waits
    (None, 0.2, [100.2, 100.4, 100.6, 100.8]),  # no cap
])
def test_sends_are_spaced_to_the_configured_rate(clocked_server, rate, work_seconds, expected_at):
    server, clock = clocked_server
    settings = SmtpSettings("127.0.0.1", server.port, max_messages_per_second=rate)
    with SmtpSession(settings, Pacer(rate, clock=clock, sleep=clock.sleep)) as session:
        for n in range(4):
            clock.now += work_seconds
            session.send(report_email(to=f"p{n}@example.org"))
    assert server.handler.received_at == pytest.approx(expected_at)


class PresigningS3:
    """Just enough of a boto3 client for links: pre-signing is local, no request is made."""

    def generate_presigned_url(self, operation, Params, ExpiresIn):
        return f"https://s3.example.org/{Params['Bucket']}/{Params['Key']}?X-Amz-Expires={ExpiresIn}"


def five_stored_reports(withdrawn: int | None = None):
    """A database holding the stored reports of sub_0..sub_4 (p0..p4@example.org), sub_`withdrawn` withdrawn."""
    db = mongomock.MongoClient(tz_aware=True).db
    mongo.ensure_indexes(db)
    for n in range(5):
        db[mongo.SUBSCRIPTIONS].insert_one({"_id": f"sub_{n}", "trial_id": "t1", "participant_id": f"P{n}",
                                            "status": "withdrawn" if n == withdrawn else "active",
                                            "email": f"p{n}@example.org"})
        db[mongo.REPORTS].insert_one({"subscription_id": f"sub_{n}", "week": WEEK.key, "shard": "s01",
                                      "s3_key": f"reports/{n}.pdf", "sha256": "abc"})
    return db


def test_a_delivery_run_keeps_its_rate_across_batches(clocked_server):
    server, clock = clocked_server
    db = five_stored_reports()
    settings = SmtpSettings("127.0.0.1", server.port, email_from=SENDER, max_messages_per_second=4)
    summary = deliver_shard(db, PresigningS3(), "bucket", settings, week=WEEK, shard_id="s01", link_ttl_hours=72,
                            owner="run-1", unsubscribe_url=UNSUBSCRIBE, batch_size=2,  # three SMTP sessions
                            pacer=Pacer(4, clock=clock, sleep=clock.sleep))
    assert summary.sent == 5
    assert server.handler.received_at == pytest.approx([100.0, 100.25, 100.5, 100.75, 101.0])


def test_every_report_of_every_batch_ends_marked_and_its_delivery_dead_letters_closed(smtp_server):
    """Marks and dead-letter closes are written once per batch: each report of each batch still gets its own."""
    db = five_stored_reports(withdrawn=3)
    # sub_1 was emailed by an earlier run that died before marking its report; sub_0 and sub_4 failed before.
    assert claim_delivery(db, "sub_1", WEEK.key, "run-0", timedelta(minutes=5))
    complete_delivery(db, "sub_1", WEEK.key, "run-0", {"s3_key": "reports/1.pdf", "sha256": "abc"}, "<m@x>")
    for sub, week in (("sub_0", WEEK.key), ("sub_4", WEEK.key), ("sub_4", "2026-11-09")):
        record_dead_letter(db, subscription_id=sub, week=week, stage="deliver", error=ConnectionError("refused"))
    settings = SmtpSettings("127.0.0.1", smtp_server.port, email_from=SENDER)
    summary = deliver_shard(db, PresigningS3(), "bucket", settings, week=WEEK, shard_id="s01", link_ttl_hours=72,
                            owner="run-1", unsubscribe_url=UNSUBSCRIBE, batch_size=2)
    assert (summary.sent, summary.already_sent, summary.not_active) == (3, 1, 1)
    states = {r["subscription_id"]: r.get("delivery_state") for r in db[mongo.REPORTS].find()}
    assert states == {"sub_0": "sent", "sub_1": "sent", "sub_2": "sent", "sub_3": "not_active", "sub_4": "sent"}
    letters = {(d["subscription_id"], d["week"]): d["status"] for d in db[mongo.DEAD_LETTERS].find()}
    assert letters == {("sub_0", WEEK.key): "resolved", ("sub_4", WEEK.key): "resolved",
                       ("sub_4", "2026-11-09"): "open"}  # another week's failure is not this run's to close
    assert sorted(m["To"] for m in smtp_server.handler.messages) == ["p0@example.org", "p2@example.org", "p4@example.org"]


def test_each_email_carries_its_own_working_unsubscribe_link_and_a_rerun_issues_no_new_ones(smtp_server):
    db = five_stored_reports(withdrawn=3)
    settings = SmtpSettings("127.0.0.1", smtp_server.port, email_from=SENDER)

    def deliver(owner: str):
        return deliver_shard(db, PresigningS3(), "bucket", settings, week=WEEK, shard_id="s01", link_ttl_hours=72,
                             owner=owner, unsubscribe_url=UNSUBSCRIBE, batch_size=2)

    def tokens_by_recipient() -> dict[str, str]:
        fields = [raw_headers(raw) for raw in smtp_server.handler.raw]
        return {f["to"][0].decode(): f["list-unsubscribe"][0].decode().rsplit("/", 1)[1].rstrip(">") for f in fields}

    assert deliver("run-1").sent == 4
    tokens = tokens_by_recipient()
    assert len(set(tokens.values())) == 4
    for address, token in tokens.items():  # each link unsubscribes its own recipient, no one else
        assert subscription_for_token(db, token)["email"] == address
    stored = db[UNSUBSCRIBE_TOKENS].count_documents({})
    assert stored == 4

    assert deliver("run-2").already_sent == 4  # nothing to send: no token issued
    assert db[UNSUBSCRIBE_TOKENS].count_documents({}) == stored

    # A restored database: a report marked sent whose send the ledger does not know is sent, with a working link.
    db[mongo.DELIVERIES].delete_one({"_id": f"sub_2:{WEEK.key}"})
    assert deliver("run-3").sent == 1
    assert len(smtp_server.handler.raw) == 5
    token = raw_headers(smtp_server.handler.raw[-1])["list-unsubscribe"][0].decode().rsplit("/", 1)[1].rstrip(">")
    assert subscription_for_token(db, token)["_id"] == "sub_2"


@pytest.mark.parametrize("rate", [0, -1, float("nan"), float("inf")])
def test_a_rate_that_is_not_a_positive_number_is_refused(rate):
    with pytest.raises(ValueError, match="max_messages_per_second"):
        SmtpSettings("127.0.0.1", max_messages_per_second=rate)


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
    from reporting_pipeline.stages.notify import ReportExpiring, _link_lifetime

    now = datetime.now(UTC)
    fresh = {"subscription_id": "sub_1", "rendered_at": now - timedelta(days=1)}
    assert _link_lifetime(fresh, timedelta(hours=72), retention_days=90) == timedelta(hours=72)
    old = {"subscription_id": "sub_1", "rendered_at": now - timedelta(days=89, hours=12)}
    lifetime = _link_lifetime(old, timedelta(hours=72), retention_days=90)
    assert timedelta(hours=11, minutes=59) < lifetime <= timedelta(hours=12)
    expiring = {"subscription_id": "sub_1", "rendered_at": now - timedelta(days=89, hours=23, minutes=30)}
    with pytest.raises(ReportExpiring):
        _link_lifetime(expiring, timedelta(hours=72), retention_days=90)


# --- emails in the participant's language, as mail servers receive them --------------------------

ENCODED_WORD = re.compile(rb"=\?utf-8\?([bq])\?[^?\s]*\?=", re.I)
LOCALIZED = {
    # language: (subject, body text, how the body goes out)
    "de-DE": ("Ihr wöchentlicher Bericht ist fertig",
              ["Guten Tag,", "Ihr Wochenbericht für die Woche vom 16.–22. Nov. 2026 ist fertig.",
               "der Link läuft am 30.11.2026, 09:00 UTC ab", "Wenn Sie diese E-Mails nicht mehr erhalten möchten"],
              "quoted-printable"),
    "ja-JP": ("週次レポートができました",
              ["こんにちは。", "2026年11月16日～22日の週次レポートができました。",
               "リンクの有効期限：2026/11/30 9:00 UTC", "このメールの配信を停止するには"],
              "base64"),
}


def localized_email(lang: str):
    return compose_email(to="a@example.org", email_from=SENDER, link=LINK,
                         expires_at=datetime(2026, 11, 30, 9, 0, tzinfo=UTC), week=WEEK,
                         msg_id=message_id("sub_1", WEEK.key, SENDER), unsubscribe_url=UNSUBSCRIBE, lang=lang)


@pytest.mark.parametrize("lang", LOCALIZED)
def test_a_localized_email_goes_out_as_7bit_mime_with_an_encoded_subject(smtp_server, dkim_key, lang):
    subject, sentences, encoding = LOCALIZED[lang]
    pem, txt = dkim_key
    [raw] = received_bytes(smtp_server, localized_email(lang),
                           dkim_selector=SELECTOR, dkim_domain=DKIM_DOMAIN, dkim_private_key=pem)
    assert_wire_format(raw)
    assert raw.isascii(), "no raw 8-bit byte anywhere: relays without 8BITMIME pass it unchanged"
    assert dkim.verify(raw, dnsfunc=dns_publishing(txt))

    # The Subject as the server got it: what is not ASCII is in RFC 2047 encoded-words (ASCII words may
    # stay as they are), none longer than 75 characters, and they decode to the translation.
    [wire_subject] = raw_headers(raw)["subject"]
    assert ENCODED_WORD.search(wire_subject)
    assert all(len(w.group(0)) <= 75 for w in ENCODED_WORD.finditer(wire_subject))
    assert str(make_header(decode_header(wire_subject.decode("ascii")))) == subject
    assert fields_unchanged(raw)

    message = message_from_bytes(raw, policy=default_policy)
    assert message["Subject"] == subject
    plain_part, html_part = message.iter_parts()
    for part in (plain_part, html_part):
        assert part.get_content_charset() == "utf-8" and part["Content-Transfer-Encoding"] == encoding
    for part in (plain_part, html_part):  # RFC 2045's limit for encoded lines
        assert max(len(line) for line in part.get_payload().splitlines()) <= 76
    plain = folded(plain_part.get_content())
    for sentence in sentences:
        assert folded(sentence) in plain
    assert LINK in plain_part.get_content().splitlines() and UNSUBSCRIBE in plain
    outline = HtmlOutline(html_part.get_content())
    assert outline.lang == lang and outline.hrefs == [LINK, UNSUBSCRIBE]
    assert folded(sentences[1]) in folded(html_part.get_content())


def fields_unchanged(raw: bytes) -> bool:
    """The headers that must never be encoded still go out verbatim."""
    fields = raw_headers(raw)
    return (fields["list-unsubscribe"] == [f"<{UNSUBSCRIBE}>".encode()]
            and fields["list-unsubscribe-post"] == [b"List-Unsubscribe=One-Click"]
            and fields["to"] == [b"a@example.org"])


def folded(text: str) -> str:
    return " ".join(text.split())


def test_an_english_email_stays_plain_ascii_headers():
    assert raw_headers(wire_bytes(localized_email("en")))["subject"] == [b"Your weekly report is ready"]


def test_header_values_parsed_once_and_shared_between_emails_change_no_byte_of_any(smtp_server):
    """Composing reuses parsed and folded header values across emails (mail._ReusedHeaders, _WirePolicy). What
    reaches the server must be what each email would be alone: its own recipient, ids, subject and links, every
    byte the same."""
    def alone(lang, n):  # composed with nothing parsed or folded before it
        WIRE_POLICY._parsed.cache_clear()
        WIRE_POLICY._fold.cache_clear()
        return wire_bytes(numbered_email(lang, n))

    def numbered_email(lang, n):
        return compose_email(to=f"p{n}@example.org", email_from=SENDER, link=f"{LINK}&n={n}",
                             expires_at=datetime(2026, 11, 30, 9, 0, tzinfo=UTC), week=WEEK,
                             msg_id=message_id(f"sub_{n}", WEEK.key, SENDER), unsubscribe_url=f"{UNSUBSCRIBE}{n}",
                             lang=lang)

    def same_moment(raw):  # the Date (composing time) and the MIME boundary (random) aside
        raw = re.sub(rb"\r\nDate: [^\r]*", b"", raw)
        return raw.replace(re.search(rb'boundary="([^"]+)"', raw).group(1), b"BOUNDARY")

    emails = [(lang, n) for n in range(40) for lang in ("ja", "en", "de")]
    WIRE_POLICY._parsed.cache_clear()
    messages = [numbered_email(lang, n) for lang, n in emails]
    assert WIRE_POLICY._parsed.cache_info().hits > 10 * len(emails)  # shared: most headers came from the cache
    received = received_bytes(smtp_server, *messages)
    for (lang, n), raw in zip(emails, received):
        fields = raw_headers(raw)
        assert (fields["to"], fields["message-id"], fields["list-unsubscribe"]) == (
            [f"p{n}@example.org".encode()], [message_id(f"sub_{n}", WEEK.key, SENDER).encode()],
            [f"<{UNSUBSCRIBE}{n}>".encode()])
        assert message_from_bytes(raw, policy=default_policy)["Subject"] == numbered_email(lang, n)["Subject"]
    assert [same_moment(raw) for raw in received] == [same_moment(alone(lang, n)) for lang, n in emails]


def test_delivery_writes_each_email_in_its_reports_language(smtp_server):
    db = mongomock.MongoClient(tz_aware=True).db
    mongo.ensure_indexes(db)
    for n, lang in enumerate(["ja-JP", "de-DE", None]):
        db[mongo.SUBSCRIPTIONS].insert_one({"_id": f"sub_{n}", "trial_id": "t1", "participant_id": f"P{n}",
                                            "status": "active", "email": f"p{n}@example.org"})
        db[mongo.REPORTS].insert_one({"subscription_id": f"sub_{n}", "week": WEEK.key, "shard": "s01",
                                      "s3_key": f"reports/{n}.pdf", "sha256": "abc",
                                      **({"language": lang} if lang else {})})  # a report from before languages
    summary = deliver_shard(db, PresigningS3(), "bucket", SmtpSettings("127.0.0.1", smtp_server.port,
                                                                       email_from=SENDER),
                            week=WEEK, shard_id="s01", link_ttl_hours=72, owner="run-1", unsubscribe_url=UNSUBSCRIBE)
    assert summary.sent == 3
    subjects = {m["To"]: (m["Subject"], HtmlOutline(m.get_body(("html",)).get_content()).lang)
                for m in smtp_server.handler.messages}
    assert subjects == {"p0@example.org": ("週次レポートができました", "ja-JP"),
                        "p1@example.org": ("Ihr wöchentlicher Bericht ist fertig", "de-DE"),
                        "p2@example.org": (SUBJECT, "en")}
