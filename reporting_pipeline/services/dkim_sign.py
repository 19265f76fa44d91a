"""DKIM signatures (RFC 6376) on outgoing mail, with dkimpy.

Gmail and Yahoo require bulk senders to sign, and the signature must cover List-Unsubscribe and
List-Unsubscribe-Post (RFC 8058) so that no relay can swap the unsubscribe link.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

# dkimpy is imported where a key is read or a message signed: it brings dnspython (~0.08 CPU-s), which
# every process that loads the pipeline's definitions (code servers, report runs, the CLI) would pay for
# even though only a delivery run with DKIM configured ever signs.

SIGNED_HEADERS = (
    "from", "to", "subject", "date", "message-id", "mime-version", "content-type",
    "list-unsubscribe", "list-unsubscribe-post",
)
# RFC 8301: verifiers ignore signatures by RSA keys under 1024 bits.
MIN_KEY_BITS = 1024
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_SELECTOR_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")


class DkimConfigError(ValueError):
    """A DKIM setting that cannot sign; the message names the setting, never the key."""


@dataclass(frozen=True)
class DkimSigner:
    selector: str
    domain: str
    private_key: bytes = field(repr=False)

    def sign(self, data: bytes) -> bytes:
        """`data` with a DKIM-Signature header in front; `data` must be exactly the bytes that are sent."""
        import dkim

        signature = dkim.sign(
            data, self.selector.encode("ascii"), self.domain.encode("ascii"), self.private_key,
            # relaxed/relaxed survives relays that refold headers or trim trailing whitespace.
            canonicalize=(b"relaxed", b"relaxed"), include_headers=[h.encode() for h in SIGNED_HEADERS],
        )
        return signature + data


def load_dkim_key(value: str, setting: str = "dkim_private_key") -> bytes:
    """The PEM bytes of an RSA private key given as PEM text or as the path of a PEM file.

    Errors name `setting` (pass the environment variable's name if that is what the operator set).
    """
    from dkim.crypto import parse_pem_private_key

    if "-----BEGIN" in value:
        # Secret stores and .env files often flatten the PEM's newlines to a literal "\n".
        pem, source = value.replace("\\n", "\n").encode(), "the PEM text"
    else:
        try:
            pem, source = Path(value).expanduser().read_bytes(), "the key file"
        except OSError as error:
            # The value is not echoed: it might be key material without its PEM armour.
            raise DkimConfigError(f"{setting}: neither PEM text nor a readable key file ({error.strerror})") from None
    try:
        bits = parse_pem_private_key(pem)["modulus"].bit_length()
    except Exception:  # dkimpy raises several kinds for malformed keys; any of them means unusable
        raise DkimConfigError(f"{setting}: {source} is not an unencrypted RSA private key in PEM form") from None
    if bits < MIN_KEY_BITS:
        raise DkimConfigError(f"{setting}: the RSA key has {bits} bits; receivers ignore keys under {MIN_KEY_BITS}")
    return pem


def signer_for(selector: str | None, domain: str | None, private_key: str | None) -> DkimSigner | None:
    """A signer when all three settings are given, None when none is; half a configuration is an error."""
    given = {"dkim_selector": selector, "dkim_domain": domain, "dkim_private_key": private_key}
    if not any(given.values()):
        return None
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise DkimConfigError(f"DKIM signing needs dkim_selector, dkim_domain and dkim_private_key; "
                              f"missing: {', '.join(missing)}")
    if not _SELECTOR_RE.fullmatch(selector):
        raise DkimConfigError(f"dkim_selector: {selector!r} is not a DNS name")
    if not _DOMAIN_RE.fullmatch(domain):
        raise DkimConfigError(f"dkim_domain: {domain!r} is not a domain name")
    return DkimSigner(selector, domain, load_dkim_key(private_key))
