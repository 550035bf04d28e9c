"""Personal client certificates (003): what identity needs to know of one, and of the header through
which the TLS-terminating proxy tells which certificate a client presented.

The proxy does the cryptography: it verifies the client's certificate chain against the company's
CA and the proof of possession of its key during the TLS handshake, then forwards the certificate's
SHA-256 fingerprint in a header (``CLIENT_CERT_HEADER``), replacing any copy the client sent. Identity
binds fingerprints to accounts; it never sees a private key.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

_HEX_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Certificate:
    sha256: str  # lowercase hex of the DER encoding, as proxies print it
    subject: str
    not_before: datetime
    not_after: datetime


class NotACertificate(ValueError):
    pass


def parse_certificate(pem: str) -> Certificate:
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError as error:
        raise NotACertificate("not a PEM-encoded X.509 certificate") from error
    return Certificate(
        sha256=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
        subject=cert.subject.rfc4514_string()[:200],
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def fingerprint_from_header(value: str | None) -> str | None:
    """``ab:cd:...`` or ``abcd...``, any case, as proxies write it; None when it is not a SHA-256."""
    if not value:
        return None
    normalised = value.strip().replace(":", "").lower()
    return normalised if _HEX_FINGERPRINT.match(normalised) else None


def device_id_of(sha256: str) -> str:
    """A certificate is the device credential of whoever holds its key: one device per certificate."""
    return f"dev_x509_{sha256[:40]}"
