"""TLS material the stack hands a service in its environment: base64 PEM, one line each (env files
hold no newlines). Names shared with infra/components/tls.py.

A server (the batch API) gets its certificate and key as files in a private temporary directory, as
ssl wants them; a client (the batch worker, the post-deploy check) trusts the stack's CA on top of
the system's.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
from pathlib import Path

CERT_ENV = "TLS_CERT_PEM_B64"
KEY_ENV = "TLS_KEY_PEM_B64"
CA_ENV = "TLS_CA_PEM_B64"


class TlsConfigError(ValueError):
    """A TLS variable is missing its partner or is not base64 PEM; the message names it."""


def _pem(name: str, value: str, kind: str) -> str:
    try:
        text = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as err:
        raise TlsConfigError(f"${name} is not base64: {err}") from None
    if f"-----BEGIN {kind}" not in text and not (kind == "PRIVATE KEY" and "PRIVATE KEY-----" in text):
        raise TlsConfigError(f"${name} holds no PEM {kind.lower()}")
    return text


def server_files(environ: os._Environ[str] | dict[str, str] = os.environ) -> tuple[str, str] | None:
    """(certificate file, key file) from $TLS_CERT_PEM_B64 and $TLS_KEY_PEM_B64; None when neither is set."""
    cert, key = environ.get(CERT_ENV, ""), environ.get(KEY_ENV, "")
    if not cert and not key:
        return None
    if not cert or not key:
        missing = KEY_ENV if cert else CERT_ENV
        raise TlsConfigError(f"${CERT_ENV} and ${KEY_ENV} go together: ${missing} is unset")
    folder = Path(tempfile.mkdtemp(prefix="tls-"))  # 0700, this process's user only
    paths = folder / "cert.pem", folder / "key.pem"
    texts = _pem(CERT_ENV, cert, "CERTIFICATE"), _pem(KEY_ENV, key, "PRIVATE KEY")
    for path, text in zip(paths, texts, strict=True):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
    return str(paths[0]), str(paths[1])


def client_verify(environ: os._Environ[str] | dict[str, str] = os.environ) -> ssl.SSLContext | bool:
    """What httpx's `verify` should be: the system's trust plus the stack's CA from $TLS_CA_PEM_B64."""
    ca = environ.get(CA_ENV, "")
    return trusting(_pem(CA_ENV, ca, "CERTIFICATE")) if ca else True


def trusting(ca_pem: str) -> ssl.SSLContext:
    """The system's trust store plus `ca_pem` (the stack output tlsCaCertificate)."""
    context = ssl.create_default_context()
    context.load_verify_locations(cadata=ca_pem)
    return context
