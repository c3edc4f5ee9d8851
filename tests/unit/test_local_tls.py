"""The local engine's pulumi_tls stand-in (infra/local/tls.py): certificates a client verifies, and renewal."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from harness.certs import lan_certificate
from infra.local import tls


def test_the_server_certificate_chains_to_the_ca_and_names_every_address() -> None:
    ca_pem, issued = lan_certificate(["stella", "127.0.0.2", "10.10.10.1"])
    ca, cert = x509.load_pem_x509_certificate(ca_pem.encode()), x509.load_pem_x509_certificate(issued.cert_pem.encode())
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["stella"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.2"),
        ipaddress.ip_address("10.10.10.1"),
    ]
    assert x509.ExtendedKeyUsageOID.SERVER_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value


def test_a_certificate_is_renewed_only_inside_its_early_renewal_window() -> None:
    now = datetime.now(UTC)
    inputs = {"validityPeriodHours": 100, "earlyRenewalHours": 10}
    outputs = {"validityEndTime": (now + timedelta(hours=100)).isoformat()}
    assert not tls.due_for_renewal(outputs, inputs, now)
    assert not tls.due_for_renewal(outputs, inputs, now + timedelta(hours=89))
    assert tls.due_for_renewal(outputs, inputs, now + timedelta(hours=91))


def test_only_ecdsa_keys_are_made_and_the_refusal_says_so() -> None:
    with pytest.raises(ValueError, match="only ECDSA keys are made locally, not 'RSA'"):
        tls.make(tls.PRIVATE_KEY, {"algorithm": "RSA"})


def test_an_operators_certificate_is_checked_for_the_names_the_stack_needs() -> None:
    from infra.components.tls import uncovered

    _, issued = lan_certificate(["*.example.org", "10.10.10.1"])
    assert uncovered(issued.cert_pem, ["lb.example.org", "10.10.10.1"]) == []
    assert uncovered(issued.cert_pem, ["a.b.example.org", "example.org", "10.10.10.2"]) == [
        "a.b.example.org",  # a wildcard covers one label
        "example.org",
        "10.10.10.2",
    ]
    with pytest.raises(ValueError, match="tlsCertificate is not a PEM certificate"):
        uncovered("not a certificate", ["x"])
