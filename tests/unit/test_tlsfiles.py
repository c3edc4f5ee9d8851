"""runtime.tlsfiles: the certificate a service gets in its environment, and bad values named."""

from __future__ import annotations

import base64
import os
import ssl
import stat
from pathlib import Path

import pytest

from harness.certs import lan_certificate
from runtime.tlsfiles import CA_ENV, CERT_ENV, KEY_ENV, TlsConfigError, client_verify, server_files


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_a_server_gets_private_files_that_ssl_loads() -> None:
    _, issued = lan_certificate(["batch.lan", "10.0.0.1"])
    files = server_files({CERT_ENV: b64(issued.cert_pem), KEY_ENV: b64(issued.key_pem)})
    assert files is not None
    cert, key = map(Path, files)
    assert cert.read_text() == issued.cert_pem and key.read_text() == issued.key_pem
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(*files)
    assert server_files({}) is None  # no certificate: plain HTTP


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({CERT_ENV: "x"}, rf"\${CERT_ENV} and \${KEY_ENV} go together: \${KEY_ENV} is unset"),
        ({KEY_ENV: "x"}, rf"\${CERT_ENV} and \${KEY_ENV} go together: \${CERT_ENV} is unset"),
        ({CERT_ENV: "not base64!", KEY_ENV: b64("k")}, rf"\${CERT_ENV} is not base64"),
        ({CERT_ENV: b64("hello"), KEY_ENV: b64("k")}, rf"\${CERT_ENV} holds no PEM certificate"),
    ],
)
def test_bad_server_values_are_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(TlsConfigError, match=message):
        server_files(environ)


def test_a_client_trusts_the_stack_ca_beside_the_system_store() -> None:
    ca, _ = lan_certificate(["lb.lan"])
    context = client_verify({CA_ENV: b64(ca)})
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert any(c["subject"] == ((("commonName", "test CA"),),) for c in context.get_ca_certs())
    assert client_verify({}) is True
    with pytest.raises(TlsConfigError, match=rf"\${CA_ENV} holds no PEM certificate"):
        client_verify({CA_ENV: b64("-----BEGIN PRIVATE KEY-----")})
    assert os.environ.get(CA_ENV) is None  # nothing leaked into this process
