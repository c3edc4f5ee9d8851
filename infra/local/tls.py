"""What pulumi_tls's provider does for the resources the program declares, with `cryptography`, for the
local engine: ECDSA keys, a self-signed CA, certificate requests and certificates the CA signs.

Outputs carry the provider's property names (privateKeyPem, certPem, certRequestPem, validityEndTime).
Like the provider, a certificate is made again when its inputs change or once it is inside its
`earlyRenewalHours`; otherwise the one in state is kept, so an unchanged `up` changes nothing.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
SELF_SIGNED_CERT = "tls:index/selfSignedCert:SelfSignedCert"
CERT_REQUEST = "tls:index/certRequest:CertRequest"
LOCALLY_SIGNED_CERT = "tls:index/locallySignedCert:LocallySignedCert"
TYPES = (PRIVATE_KEY, SELF_SIGNED_CERT, CERT_REQUEST, LOCALLY_SIGNED_CERT)
CERTIFICATES = (SELF_SIGNED_CERT, LOCALLY_SIGNED_CERT)

_CURVES: dict[str, ec.EllipticCurve] = {"P224": ec.SECP224R1(), "P256": ec.SECP256R1(), "P384": ec.SECP384R1()}
_SUBJECT = {"commonName": NameOID.COMMON_NAME, "organization": NameOID.ORGANIZATION_NAME}


def make(type_: str, inputs: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The provider's outputs for a new resource of `type_`."""
    now = now or datetime.now(UTC)
    if type_ == PRIVATE_KEY:
        return {**inputs, **_private_key(inputs)}
    if type_ == CERT_REQUEST:
        return {**inputs, "certRequestPem": _request(inputs)}
    if type_ == SELF_SIGNED_CERT:
        return {**inputs, **_certificate(inputs, now, issuer=None)}
    if type_ == LOCALLY_SIGNED_CERT:
        return {**inputs, **_certificate(inputs, now, issuer=inputs)}
    raise ValueError(f"not a pulumi_tls resource: {type_}")


def due_for_renewal(outputs: dict[str, Any], inputs: dict[str, Any], now: datetime | None = None) -> bool:
    """A certificate inside its early-renewal window (the provider's readyForRenewal)."""
    end = datetime.fromisoformat(outputs["validityEndTime"])
    return (now or datetime.now(UTC)) >= end - timedelta(hours=float(inputs.get("earlyRenewalHours") or 0))


def _private_key(inputs: dict[str, Any]) -> dict[str, str]:
    if inputs.get("algorithm") != "ECDSA":
        raise ValueError(f"only ECDSA keys are made locally, not {inputs.get('algorithm')!r}")
    key = ec.generate_private_key(_CURVES[inputs.get("ecdsaCurve") or "P224"])
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {"privateKeyPem": private.decode(), "publicKeyPem": public.decode()}


def _key(pem: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("only ECDSA keys are signed with locally")
    return key


def _name(subject: dict[str, str] | None) -> x509.Name:
    return x509.Name([x509.NameAttribute(_SUBJECT[k], v) for k, v in (subject or {}).items() if k in _SUBJECT])


def _alt_names(inputs: dict[str, Any]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in inputs.get("dnsNames") or []]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in inputs.get("ipAddresses") or []]
    return names


def _request(inputs: dict[str, Any]) -> str:
    key = _key(inputs["privateKeyPem"])
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(inputs.get("subject")))
    if names := _alt_names(inputs):
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _certificate(inputs: dict[str, Any], now: datetime, issuer: dict[str, Any] | None) -> dict[str, Any]:
    """Self-signed (issuer None: subject, key and names from `inputs`) or signed by the CA in `issuer`."""
    end = now + timedelta(hours=float(inputs["validityPeriodHours"]))
    uses = set(inputs.get("allowedUses") or [])
    if issuer is None:
        signing_key = _key(inputs["privateKeyPem"])
        subject = issuer_name = _name(inputs.get("subject"))
        public_key = signing_key.public_key()
        names = _alt_names(inputs)
    else:
        request = x509.load_pem_x509_csr(inputs["certRequestPem"].encode())
        ca = x509.load_pem_x509_certificate(inputs["caCertPem"].encode())
        signing_key = _key(inputs["caPrivateKeyPem"])
        subject, issuer_name = request.subject, ca.subject
        request_key = request.public_key()
        if not isinstance(request_key, ec.EllipticCurvePublicKey):
            raise ValueError("only ECDSA certificate requests are signed locally")
        public_key = request_key
        try:
            names = list(request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            names = []
    is_ca = bool(inputs.get("isCaCertificate"))
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature="digital_signature" in uses,
                content_commitment=False,
                key_encipherment="key_encipherment" in uses,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign="cert_signing" in uses,
                crl_sign="crl_signing" in uses,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if "server_auth" in uses:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()), critical=False
        )
    pem = builder.sign(signing_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
    return {"certPem": pem, "validityStartTime": now.isoformat(), "validityEndTime": end.isoformat()}
