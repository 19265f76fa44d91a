"""Notify stage: a pre-signed, expiring link to each stored report, sent by email exactly once.

The `deliveries` collection is the ledger: one document per (subscription, week), claimed with a
lease before sending and marked sent afterwards, so a retried or doubled run never sends twice.
"""

from __future__ import annotations

import hashlib
import quopri
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from functools import partial
from html import escape

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from reporting_pipeline.compat import batched
from reporting_pipeline.errors import InvalidEmailAddress
from reporting_pipeline.operations.dead_letters import record_dead_letter, resolve_dead_letters
from reporting_pipeline.operations.retain import report_expires_at
from reporting_pipeline.services import mongo
from reporting_pipeline.services.mail import (
    BODY_POLICY,
    MAX_LINE_LENGTH,
    WIRE_POLICY,
    Pacer,
    SmtpSession,
    SmtpSettings,
    validate_email,
)
from reporting_pipeline.services.objectstore import presigned_get_url
from reporting_pipeline.services.retry import Breaker, call_with_retry
from reporting_pipeline.settings import MAX_LINK_TTL_HOURS
from reporting_pipeline.weeks import Week

from .i18n import N_, Language, language
from .subscribe import issue_unsubscribe_token, issue_unsubscribe_tokens

# English msgid; each email is in its report's language (the `language` its `reports` record carries).
SUBJECT = N_("Your weekly report is ready")
# Printable ASCII but the angle brackets that delimit the URI in List-Unsubscribe.
_HEADER_URI_RE = re.compile(r"[!-;=?-~]+")
@dataclass
class DeliverySummary:
    sent: int = 0
    already_sent: int = 0
    held_elsewhere: int = 0  # claimed by another run whose lease has not run out: not done by this run
    not_active: int = 0
    failed: int = 0

    @property
    def complete(self) -> bool:
        return self.held_elsewhere == 0 and self.failed == 0

    def as_metadata(self) -> dict:
        return {"sent": self.sent, "already_sent": self.already_sent, "held_elsewhere": self.held_elsewhere,
                "not_active": self.not_active, "failed": self.failed, "complete": self.complete}


def link_ttl(hours: int) -> timedelta:
    if not 1 <= hours <= MAX_LINK_TTL_HOURS:
        raise ValueError(f"link lifetime must be 1..{MAX_LINK_TTL_HOURS} hours, got {hours}")
    return timedelta(hours=hours)


def message_id(subscription_id: str, week_key: str, email_from: str) -> str:
    """Stable per (subscription, week): should a send ever repeat, mail clients see the same message."""
    token = hashlib.sha256(f"{subscription_id}:{week_key}".encode()).hexdigest()[:32]
    domain = email_from.rsplit("@", 1)[-1].strip(">") or "localhost"
    return f"<report-{token}@{domain}>"


def list_unsubscribe(url: str) -> str:
    """The List-Unsubscribe value `<url>`, refused unless it goes on the wire verbatim on one line."""
    value = f"<{url}>"
    # Anything else would come out as encoded-words ("=?" in the URL would even be decoded as one).
    if not _HEADER_URI_RE.fullmatch(url) or "=?" in url or len(f"List-Unsubscribe: {value}") > MAX_LINE_LENGTH:
        raise ValueError("unsubscribe URL must be printable ASCII without spaces, '<', '>' or '=?', "
                         f"and fit on one {MAX_LINE_LENGTH}-character header line")
    return value


def compose_email(
    *, to: str, email_from: str, link: str, expires_at: datetime, week: Week, msg_id: str, unsubscribe_url: str,
    lang: str = "en",
) -> EmailMessage:
    """The notification in language `lang` (the report's), as plain text and as HTML: a greeting, the
    link and its expiry. No health data, no trial name: the subject and body are the same for every trial.

    A subject outside ASCII goes out as RFC 2047 encoded-words; a body outside ASCII as UTF-8 in
    quoted-printable or base64 (whichever is shorter), never as raw 8-bit a relay could refuse.
    """
    words = language(lang)
    message = EmailMessage(policy=WIRE_POLICY)
    message["Subject"] = _subject(words)
    message["From"] = email_from
    message["To"] = to
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = msg_id
    expiry = words.moment_utc(expires_at.astimezone(UTC))
    week_label = words.week_range(week.monday, week.sunday)
    # RFC 8058 one-click unsubscribe: mail clients show an Unsubscribe button that POSTs to the URL.
    message["List-Unsubscribe"] = list_unsubscribe(unsubscribe_url)
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    _set_body(message, _plain_body(words, week_label, link, expiry, unsubscribe_url), "plain")
    _set_body(message, _html_body(words, week_label, link, expiry, unsubscribe_url), "html")
    return message


def _set_body(message: EmailMessage, text: str, subtype: str) -> None:
    """Add a text part. An encoded one is made under BODY_POLICY: the wire policy's 998-character lines
    would give base64 and quoted-printable lines longer than RFC 2045's 76."""
    cte = _body_encoding(text)
    message.policy = WIRE_POLICY if cte is None else BODY_POLICY
    try:
        if subtype == "plain":
            message.set_content(text, cte=cte)
        else:
            message.add_alternative(text, subtype=subtype, cte=cte)
    finally:
        message.policy = WIRE_POLICY


def _subject(words: Language) -> str:
    return words._(SUBJECT)


def _body_encoding(text: str) -> str | None:
    """None (7bit) for ASCII; otherwise the shorter of quoted-printable (mostly-Latin text) and base64 (Japanese).

    The wire policy would pick raw 8bit for non-ASCII, which needs 8BITMIME on every relay on the way.
    """
    if text.isascii():
        return None
    data = text.encode("utf-8")
    qp = len(quopri.encodestring(data))
    return "quoted-printable" if qp <= len(data) * 4 // 3 + len(data) // 57 else "base64"


def _plain_body(words: Language, week_label: str, link: str, expiry: str, unsubscribe_url: str) -> str:
    # The link has a line of its own, the first link of the body: the demo and the outbox reader take it from there.
    return (
        f"{words._('Hello,')}\n\n"
        f"{words._('Your weekly report for the week of {week} is ready.', week=week_label)}\n\n"
        f"{words._('Download it here (the link expires on {expiry}):', expiry=expiry)}\n{link}\n\n"
        f"{words._('The link is personal; please do not forward this email.')}\n\n"
        f"{words._('To stop receiving these emails, unsubscribe here:')}\n{unsubscribe_url}\n"
    )


def _html_body(words: Language, week_label: str, link: str, expiry: str, unsubscribe_url: str) -> str:
    """The same text as HTML: no images, scripts or styles to fetch, so nothing tracks the reader."""
    e = partial(escape, quote=True)
    download = f'<a href="{e(link)}">{e(words._("Download your report"))}</a>'
    unsubscribe = f'<a href="{e(unsubscribe_url)}">{e(words._("unsubscribe here"))}</a>'
    # The links are markup put into the translated sentences after escaping them, not escaped with them.
    expires = e(words._("{link} (the link expires on {expiry}).", link="{link}", expiry=expiry))
    stop = e(words._("To stop receiving these emails, {unsubscribe}.", unsubscribe="{unsubscribe}"))
    return (
        f'<!DOCTYPE html>\n<html lang="{e(words.tag)}">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{e(_subject(words))}</title>\n</head>\n<body>\n"
        f"<p>{e(words._('Hello,'))}</p>\n"
        f"<p>{e(words._('Your weekly report for the week of {week} is ready.', week=week_label))}</p>\n"
        f"<p>{expires.replace('{link}', download)}</p>\n"
        f"<p>{e(words._('The link is personal; please do not forward this email.'))}</p>\n"
        f"<p>{stop.replace('{unsubscribe}', unsubscribe)}</p>\n"
        "</body>\n</html>\n"
    )


CLAIMED, SENT, HELD = "claimed", "sent", "held"


def claim_delivery(db: Database, subscription_id: str, week_key: str, owner: str, lease: timedelta,
                   shard: str | None = None) -> bool:
    """Take the right to send this (subscription, week); False if sent already or someone else holds it."""
    return try_claim(db, subscription_id, week_key, owner, lease, shard) == CLAIMED


def try_claim(db: Database, subscription_id: str, week_key: str, owner: str, lease: timedelta,
              shard: str | None = None) -> str:
    """CLAIMED (ours to send), SENT (done before) or HELD (another run holds a live claim on it)."""
    now = datetime.now(UTC)
    key = f"{subscription_id}:{week_key}"
    try:
        db[mongo.DELIVERIES].insert_one({
            "_id": key, "subscription_id": subscription_id, "week": week_key, "shard": shard, "status": "sending",
            "owner": owner, "lease_expires_at": now + lease, "attempts": 1, "created_at": now,
        })
        return CLAIMED
    except DuplicateKeyError:
        pass
    # Only a failed send, or one whose lease ran out (its holder died), can be taken over. A claim
    # already held by this owner is ours: the insert went through but its reply was lost.
    taken = db[mongo.DELIVERIES].find_one_and_update(
        {"_id": key, "$or": [
            {"status": "failed"},
            {"status": "sending", "lease_expires_at": {"$lt": now}},
            {"status": "sending", "owner": owner},
        ]},
        {"$set": {"status": "sending", "owner": owner, "lease_expires_at": now + lease}, "$inc": {"attempts": 1}},
    )
    if taken is not None:
        return CLAIMED
    current = db[mongo.DELIVERIES].find_one({"_id": key}, {"status": 1})
    return SENT if current and current.get("status") == "sent" else HELD


def mark_reports(db: Database, subscription_ids: list[str], week_key: str, state: str) -> None:
    """Record on reports what delivery made of them (`sent`, `not_active`, `dead_letter`); reports without it are
    looked for by the delivery healer (`reporting_pipeline.operations.heal`)."""
    db[mongo.REPORTS].update_many({"subscription_id": {"$in": subscription_ids}, "week": week_key},
                                  {"$set": {"delivery_state": state}})


def complete_delivery(db: Database, subscription_id: str, week_key: str, owner: str, report: dict, msg_id: str) -> None:
    now = datetime.now(UTC)
    db[mongo.DELIVERIES].update_one(
        {"_id": f"{subscription_id}:{week_key}", "owner": owner},
        {"$set": {"status": "sent", "sent_at": now, "message_id": msg_id, "report_sha256": report["sha256"],
                  "shard": report.get("shard"), "rendered_at": report.get("rendered_at")}},
    )
    # Append-only audit trail of every send.
    db["delivery_audit"].insert_one({
        "subscription_id": subscription_id, "week": week_key, "owner": owner, "s3_key": report["s3_key"],
        "report_sha256": report["sha256"], "message_id": msg_id, "sent_at": now,
    })


def release_delivery(db: Database, subscription_id: str, week_key: str, owner: str) -> None:
    """Give the claim back after a failed send so a later attempt may claim it at once."""
    db[mongo.DELIVERIES].update_one(
        {"_id": f"{subscription_id}:{week_key}", "owner": owner, "status": "sending"},
        {"$set": {"status": "failed", "released_at": datetime.now(UTC)}},
    )


class ReportExpiring(Exception):
    """The stored report is deleted by retention before a useful link could expire."""


MIN_LINK_LIFETIME = timedelta(hours=1)


def _link_lifetime(report: dict, ttl: timedelta, retention_days: int | None) -> timedelta:
    """The link may not outlive the report: shorten it to the report's remaining retention."""
    if retention_days is None:
        return ttl
    expires = report_expires_at(report, retention_days)
    if expires is None:
        return ttl
    remaining = expires - datetime.now(UTC)
    if remaining < MIN_LINK_LIFETIME:
        raise ReportExpiring(f"report for subscription {report['subscription_id']} expires in less than an hour")
    return min(ttl, remaining)


def _report_batches(db: Database, week_key: str, shard_id: str, size: int):
    cursor = db[mongo.REPORTS].find({"week": week_key, "shard": shard_id}).sort("subscription_id", 1).batch_size(size)
    return batched(cursor, size)


def deliver_shard(
    db: Database,
    s3,
    bucket: str,
    smtp: SmtpSettings,
    *,
    week: Week,
    shard_id: str,
    link_ttl_hours: int,
    owner: str,
    unsubscribe_url: str,
    batch_size: int = 50,
    lease: timedelta = timedelta(minutes=15),
    retention_days: int | None = None,
    log=None,
    pacer: Pacer | None = None,
) -> DeliverySummary:
    """Email every stored report of one (week, shard) that has not been emailed yet.

    `unsubscribe_url` is the base of the one-click links: each email gets `<base>/<fresh token>`.
    Sends are paced to `smtp.max_messages_per_second` over the whole call, or by `pacer` if given.
    """
    ttl = link_ttl(link_ttl_hours)
    summary = DeliverySummary()
    breaker = Breaker()
    pacer = pacer or Pacer(smtp.max_messages_per_second)  # one for all batches: the cap is per run
    for batch in _report_batches(db, week.key, shard_id, batch_size):
        ids = [r["subscription_id"] for r in batch]
        # Checked at send time: an unsubscribed participant gets nothing, even if rendered.
        active = {s["_id"]: s for s in db[mongo.SUBSCRIPTIONS].find({"_id": {"$in": ids}, "status": "active"})}
        # The unsubscribe tokens of the batch's emails in one write, not one per email. Only reports not sent
        # before get one; the few that turn out held elsewhere or undeliverable leave a token nobody has.
        tokens = call_with_retry(lambda: issue_unsubscribe_tokens(db, [
            r["subscription_id"] for r in batch
            if r["subscription_id"] in active and r.get("delivery_state") != "sent"]))
        sent = []  # marked once per batch: should the run die first, the healer finds them sent in the ledger
        with SmtpSession(smtp, pacer) as session:
            for report in batch:
                sub_id = report["subscription_id"]
                subscription = active.get(sub_id)
                if subscription is None:
                    summary.not_active += 1
                    if report.get("delivery_state") != "not_active":
                        call_with_retry(lambda: mark_reports(db, [sub_id], week.key, "not_active"))
                    continue
                try:
                    address = validate_email(subscription.get("email"), sub_id)
                except InvalidEmailAddress as error:
                    record_dead_letter(db, subscription_id=sub_id, week=week.key, stage="deliver", error=error)
                    call_with_retry(lambda: mark_reports(db, [sub_id], week.key, "dead_letter"))  # redrive's now
                    summary.failed += 1
                    continue
                claim = call_with_retry(lambda: try_claim(db, sub_id, week.key, owner, lease, shard_id))
                if claim == SENT:
                    summary.already_sent += 1
                    if report.get("delivery_state") != "sent":
                        sent.append(sub_id)
                    continue
                if claim == HELD:
                    summary.held_elsewhere += 1  # its holder sends it, or the healer once the lease runs out
                    continue
                msg_id = message_id(sub_id, week.key, smtp.email_from)
                try:
                    link_lifetime = _link_lifetime(report, ttl, retention_days)
                    expires_at = datetime.now(UTC) + link_lifetime
                    link = presigned_get_url(s3, bucket, report["s3_key"], int(link_lifetime.total_seconds()))
                    # A report marked sent that the ledger does not know (a restored database) has none yet.
                    token = tokens.get(sub_id) or call_with_retry(lambda: issue_unsubscribe_token(db, sub_id))
                    # In the language the report was rendered in (older reports have none: English).
                    message = compose_email(to=address, email_from=smtp.email_from, link=link, expires_at=expires_at,
                                            week=week, msg_id=msg_id, lang=report.get("language") or "en",
                                            unsubscribe_url=f"{unsubscribe_url.rstrip('/')}/{token}")
                    # Safe to retry: a transient SMTP failure (4xx, refused connection) means not accepted.
                    call_with_retry(lambda: session.send(message))
                except Exception as error:  # one failed send must not stop the shard
                    call_with_retry(lambda: release_delivery(db, sub_id, week.key, owner))
                    record_dead_letter(db, subscription_id=sub_id, week=week.key, stage="deliver", error=error)
                    summary.failed += 1
                    if log:
                        # No ids in the run's log: the dead letter in MongoDB says whose delivery failed.
                        log.warning(f"a delivery failed: {type(error).__name__} (see dead letters)")
                    breaker.failed(error)
                    continue
                breaker.succeeded()
                call_with_retry(lambda: complete_delivery(db, sub_id, week.key, owner, report, msg_id))
                sent.append(sub_id)
                summary.sent += 1
        if sent:
            call_with_retry(lambda: mark_reports(db, sent, week.key, "sent"))
            resolve_dead_letters(db, subscription_ids=sent, week=week.key, stages=("deliver",))
    return summary


def compose_alert(*, to: str, email_from: str, job: str, partition: str, run_id: str, attempts: int,
                  reason: str, ui_url: str) -> EmailMessage:
    """Operator alert for a partition that stays failed; names runs and partitions, never participants."""
    message = EmailMessage()
    message["Subject"] = f"[reporting] {job} failed for partition {partition} after {attempts} redrive(s)"
    message["From"] = email_from
    message["To"] = to
    message["Date"] = format_datetime(datetime.now(UTC))
    message.set_content(
        f"Job: {job}\nPartition: {partition}\nRun: {run_id}\nRedrive attempts: {attempts}\n"
        f"Reason: {reason[:300]}\n\n"
        f"The partition stays failed until someone re-runs it: {ui_url.rstrip('/')}/runs/{run_id}\n"
        "Backfill it from the asset's Partitions tab once the cause is fixed.\n"
    )
    return message
