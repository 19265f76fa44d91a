"""SMTP: the connection settings, a paced and reconnecting session that sends exactly the bytes it
signs, and the one check of an email address that subscribing and delivery share."""

from __future__ import annotations

import email.headerregistry
import email.policy
import functools
import re
import smtplib
import ssl
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr

from reporting_pipeline.errors import InvalidEmailAddress

from .dkim_sign import DkimSigner, signer_for

# How messages go on the wire: CRLF line ends, headers folded only past RFC 5322's 998-character line
# limit. At the default 78, Python "folds" a long URL in List-Unsubscribe (it has no whitespace to fold
# at) into RFC 2047 encoded-words, which RFC 2369 does not allow and receivers do not decode there.
MAX_LINE_LENGTH = 998
# RFC 2047: an encoded-word is at most 75 characters. Headers that need them (a subject in German or
# Japanese) are folded at 76, which keeps every encoded-word within that; the rest at 998.
ENCODED_WORD_LINE_LENGTH = 76


class _HeaderClasses(email.headerregistry.HeaderRegistry):
    """The standard header classes, each made once: the stock registry builds a new class for every header
    of every message, a fifth of composing an email."""

    def __init__(self):
        super().__init__()
        self._made: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        if key not in self._made:
            self._made[key] = super().__getitem__(name)
        return self._made[key]


class _ReusedHeaders:
    """Parse a header value once and reuse the result: most of a notification's headers (its subject, sender,
    MIME headers) are the same in every email, and parsing them again was two fifths of composing one.
    Header objects are immutable strings, so sharing them between messages is safe. Least recently used
    go first: the values of one email only (recipient, date, ids) age out, those every email has stay."""

    @functools.lru_cache(maxsize=128)
    def _parsed(self, name: str, value: str):
        return super().header_store_parse(name, value)

    def header_store_parse(self, name, value):
        if type(value) is str:
            return self._parsed(name, value)
        return super().header_store_parse(name, value)


class _BodyPolicy(_ReusedHeaders, email.policy.EmailPolicy):
    pass


# RFC 2045: quoted-printable and base64 body lines are at most 76 characters (Python's SMTP policy allows 78).
BODY_POLICY = _BodyPolicy(linesep="\r\n", max_line_length=76, header_factory=_HeaderClasses())


class _WirePolicy(_ReusedHeaders, email.policy.EmailPolicy):
    # Folded once too: the same header comes out the same way in every email (its name and text decide it).
    @functools.lru_cache(maxsize=128)
    def _fold(self, name, value, refold_binary=False):
        if not str(value).isascii():
            return email.policy.EmailPolicy._fold(self.clone(max_line_length=ENCODED_WORD_LINE_LENGTH), name, value,
                                                  refold_binary)
        return super()._fold(name, value, refold_binary)


WIRE_POLICY = _WirePolicy(linesep="\r\n", max_line_length=MAX_LINE_LENGTH, header_factory=_HeaderClasses())
# Deliberately strict: one @, no spaces or quotes, a dotted domain of valid labels.
_EMAIL_RE = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@"
    r"(?=.{1,253}\Z)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)



@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 25
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    email_from: str = "reports@localhost"
    timeout: float = 30.0
    # DKIM signing: all three or none. The key is PEM text or the path of a PEM file; kept out of repr.
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    dkim_private_key: str | None = field(default=None, repr=False)
    # Cap on one delivery run's sends; None sends as fast as the server accepts.
    max_messages_per_second: float | None = None

    def __post_init__(self):
        rate = self.max_messages_per_second
        if rate is not None and not 0 < rate < float("inf"):
            raise ValueError(f"max_messages_per_second must be a positive number or None, got {rate}")
        self.dkim_signer()  # a bad or half DKIM configuration fails here, not at the first send

    def dkim_signer(self) -> DkimSigner | None:
        return signer_for(self.dkim_selector, self.dkim_domain, self.dkim_private_key)


def validate_email(address: object, subscription_id: str) -> str:
    """The address if it can be sent to; the error never repeats the address itself."""
    if not isinstance(address, str) or not _EMAIL_RE.fullmatch(address) or ".." in address:
        raise InvalidEmailAddress(f"subscription {subscription_id}: email address is not valid", subscription_id)
    return address


def wire_bytes(message: EmailMessage) -> bytes:
    """The message as sent: any message (an alert composed elsewhere too) gets the wire policy's headers."""
    return message.as_bytes(policy=WIRE_POLICY)


def envelope_of(message: EmailMessage) -> tuple[str, list[str]]:
    """SMTP sender and recipients from From and To (our messages have no Cc or Bcc)."""
    sender = parseaddr(str(message["From"]))[1]
    recipients = [address for _, address in getaddresses([str(v) for v in message.get_all("To", [])])]
    return sender, recipients


class Pacer:
    """Spaces sends at least 1/rate seconds apart (rate None: no limit).

    Clock and sleep are injectable so that tests pace on a fake clock instead of waiting.
    """

    def __init__(self, rate: float | None, *, clock=time.monotonic, sleep=time.sleep):
        self._interval = 0.0 if rate is None else 1.0 / rate
        self._clock, self._sleep = clock, sleep
        self._next_at: float | None = None

    def wait(self) -> None:
        """Return once the next send may go."""
        if not self._interval:
            return
        now = self._clock()
        # Re-read the clock after each sleep rather than assume it lasted exactly as asked.
        while self._next_at is not None and now < self._next_at:
            self._sleep(self._next_at - now)
            now = self._clock()
        self._next_at = now + self._interval


class SmtpSession:
    """One SMTP connection reused for a batch of messages, reconnecting if the server hangs up.

    Sends are paced by `pacer`; share one across sessions to pace a whole run.
    """

    def __init__(self, settings: SmtpSettings, pacer: Pacer | None = None):
        self.settings = settings
        self._pacer = pacer or Pacer(settings.max_messages_per_second)
        self._signer = settings.dkim_signer()
        self._smtp: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        if s.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if s.username:
            smtp.login(s.username, s.password or "")
        return smtp

    def send(self, message: EmailMessage) -> None:
        """Send the message as exactly the bytes of `wire_bytes`, DKIM-signed if configured."""
        data = wire_bytes(message)
        if self._signer:
            data = self._signer.sign(data)  # signed as sent: any later change would break the signature
        sender, recipients = envelope_of(message)
        self._pacer.wait()
        if self._smtp is None:
            self._smtp = self._connect()
        try:
            self._smtp.sendmail(sender, recipients, data)
        except smtplib.SMTPServerDisconnected:
            self._smtp = self._connect()
            self._smtp.sendmail(sender, recipients, data)

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except smtplib.SMTPException:
                pass
            self._smtp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
