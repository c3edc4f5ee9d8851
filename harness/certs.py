"""Real certificates for tests and benchmarks, made as the local engine makes the stack's
(infra/local/tls.py, standing in for pulumi_tls, with the component's key uses): an ECDSA CA and a
server certificate it signs for the given names."""

from __future__ import annotations

from dataclasses import dataclass

from infra.components.tls import CA_USES, SERVER_USES, split_names
from infra.local import tls


@dataclass(frozen=True)
class Issued:
    cert_pem: str
    key_pem: str


def lan_certificate(names: list[str], *, hours: int = 24) -> tuple[str, Issued]:
    """(CA certificate PEM, server certificate and key) for `names` (DNS names and IPs)."""
    ecdsa = {"algorithm": "ECDSA", "ecdsaCurve": "P256"}
    ca_key = tls.make(tls.PRIVATE_KEY, ecdsa)["privateKeyPem"]
    ca = tls.make(
        tls.SELF_SIGNED_CERT,
        {
            "privateKeyPem": ca_key,
            "isCaCertificate": True,
            "subject": {"commonName": "test CA"},
            "validityPeriodHours": hours,
            "allowedUses": CA_USES,
        },
    )["certPem"]
    key = tls.make(tls.PRIVATE_KEY, ecdsa)["privateKeyPem"]
    dns, ips = split_names(names)
    request = tls.make(
        tls.CERT_REQUEST,
        {"privateKeyPem": key, "subject": {"commonName": names[0]}, "dnsNames": dns, "ipAddresses": ips},
    )["certRequestPem"]
    cert = tls.make(
        tls.LOCALLY_SIGNED_CERT,
        {
            "certRequestPem": request,
            "caPrivateKeyPem": ca_key,
            "caCertPem": ca,
            "validityPeriodHours": hours,
            "allowedUses": SERVER_USES,
        },
    )["certPem"]
    return ca, Issued(cert, key)
