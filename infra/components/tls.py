"""TLS for the public endpoints (load balancer, batch API, Grafana): the operator's certificate, or one
signed by a CA generated for the LAN.

With `tlsCertificate`/`tlsPrivateKey` unset, pulumi_tls makes an ECDSA P-256 CA (ten years) and a
server certificate from it (one year) for every name and address the hosts are reached by, plus
`tlsNames`. The keys live in state as secrets; the CA certificate is the stack output
`tlsCaCertificate`, which clients add to what they trust. The server certificate is replaced by the
first `pulumi up` in its last 30 days (`early_renewal_hours`), which also restarts the services
that serve it.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass
from typing import NotRequired, TypedDict

import pulumi
import pulumi_tls as tls

from infra.services import Secret, secret_output
from runtime.tlsfiles import CA_ENV, CERT_ENV, KEY_ENV

__all__ = ["CA_ENV", "CERT_ENV", "KEY_ENV"]  # the components import them from here

CA_VALIDITY_HOURS = 10 * 365 * 24
SERVER_VALIDITY_HOURS = 365 * 24
RENEW_BEFORE_HOURS = 30 * 24
CA_NAME = "vllm-gb10 LAN CA"


# What a service that serves TLS itself receives (secrets: one base64 line each) and what its clients
# trust (the CA, not a secret) are runtime.tlsfiles' CERT_ENV, KEY_ENV and CA_ENV.
CA_USES = ["cert_signing", "crl_signing", "digital_signature"]
SERVER_USES = ["digital_signature", "key_encipherment", "server_auth"]
TLS_DIR = "/tmp/tls"  # inside the container: written at start, gone with the container


@dataclass(frozen=True)
class ServerTls:
    """The certificate a compose service serves itself (kubernetes terminates TLS at the Ingress)."""

    cert_b64: pulumi.Output[str]
    key_b64: pulumi.Output[str]
    ca_b64: pulumi.Output[str]  # empty with the operator's own certificate (clients use their trust store)

    @property
    def secrets(self) -> tuple[Secret, Secret]:
        return Secret(CERT_ENV, self.cert_b64), Secret(KEY_ENV, self.key_b64)


def write_pem_files(then: str) -> str:
    """Shell for a container's entrypoint: the certificate and key from the environment into TLS_DIR
    (cert.pem, key.pem and server.pem = both, as HAProxy takes them), private to the container's
    user; then `exec` of `then`."""
    decode = f'umask 077 && mkdir -p {TLS_DIR} && printf %s "${CERT_ENV}" | base64 -d > {TLS_DIR}/cert.pem'
    return (
        f'{decode} && printf %s "${KEY_ENV}" | base64 -d > {TLS_DIR}/key.pem'
        f" && cat {TLS_DIR}/cert.pem {TLS_DIR}/key.pem > {TLS_DIR}/server.pem && exec {then}"
    )


class PublicTlsArgs(TypedDict):
    names: list[str]  # DNS names and IP addresses the generated certificate covers; the first is its CN
    certificate: pulumi.Input[str] | None  # the operator's PEM chain; None: generate
    private_key: pulumi.Input[str] | None
    # What the operator's certificate must cover too: the addresses the batch worker and the post-deploy
    # check reach the load balancer and the batch API at (compose: the hosts' cluster addresses).
    internal_names: NotRequired[list[str]]


def uncovered(cert_pem: str, names: list[str]) -> list[str]:
    """The `names` (DNS names or IPs) the first certificate in `cert_pem` does not cover."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError as err:
        raise ValueError(f"tlsCertificate is not a PEM certificate: {err}") from None
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return list(names)
    dns = [d.lower() for d in alt.get_values_for_type(x509.DNSName)]
    ips = alt.get_values_for_type(x509.IPAddress)

    def covered(name: str) -> bool:
        try:
            return ipaddress.ip_address(name) in ips
        except ValueError:
            host = name.lower()
            wildcard = "*." + host.split(".", 1)[1] if "." in host else None
            return host in dns or (wildcard is not None and wildcard in dns)

    return [n for n in names if not covered(n)]


def _require_names(cert_pem: str, names: list[str]) -> str:
    missing = uncovered(cert_pem, names)
    if missing:
        raise ValueError(
            f"tlsCertificate does not cover {', '.join(missing)}: the batch worker and the post-deploy check "
            "reach the load balancer and the batch API there; add them to the certificate's names"
        )
    return cert_pem


def split_names(names: list[str]) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses), each once, in the order given."""
    dns: list[str] = []
    ips: list[str] = []
    for name in dict.fromkeys(names):
        try:
            ips.append(str(ipaddress.ip_address(name)))
        except ValueError:
            dns.append(name)
    return dns, ips


def b64(value: pulumi.Input[str]) -> pulumi.Output[str]:
    """A PEM as one base64 line: env files hold no newlines (the services decode it at start)."""
    return pulumi.Output.from_input(value).apply(lambda text: base64.b64encode(text.encode()).decode())


class PublicTls(pulumi.ComponentResource):
    cert_pem: pulumi.Output[str]  # the server certificate (chain)
    key_pem: pulumi.Output[str]  # its private key (secret)
    ca_pem: pulumi.Output[str]  # the generated CA's certificate; empty with the operator's own certificate
    server: ServerTls  # the same, as the services receive them

    def __init__(self, name: str, args: PublicTlsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("vllm-gb10:tls:PublicTls", name, None, opts)
        if args["certificate"] is not None and args["private_key"] is not None:
            internal = args.get("internal_names", [])
            self.cert_pem = pulumi.Output.from_input(args["certificate"]).apply(
                lambda pem: _require_names(pem, internal)
            )
            self.key_pem = secret_output(args["private_key"])
            self.ca_pem = pulumi.Output.from_input("")
        else:
            self._generate(name, args["names"])
        self.server = ServerTls(b64(self.cert_pem), secret_output(b64(self.key_pem)), b64(self.ca_pem))
        self.register_outputs({"caCertificate": self.ca_pem})

    def _generate(self, name: str, names: list[str]) -> None:
        if not names:
            raise ValueError(f"{name}: a generated certificate needs at least one name or address")
        child = pulumi.ResourceOptions(parent=self)
        ca_key = tls.PrivateKey(f"{name}-ca-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        ca = tls.SelfSignedCert(
            f"{name}-ca",
            private_key_pem=ca_key.private_key_pem,
            is_ca_certificate=True,
            subject=tls.SelfSignedCertSubjectArgs(common_name=CA_NAME, organization="vllm-gb10"),
            validity_period_hours=CA_VALIDITY_HOURS,
            allowed_uses=CA_USES,
            opts=child,
        )
        key = tls.PrivateKey(f"{name}-server-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        dns, ips = split_names(names)
        request = tls.CertRequest(
            f"{name}-server-request",
            private_key_pem=key.private_key_pem,
            subject=tls.CertRequestSubjectArgs(common_name=names[0], organization="vllm-gb10"),
            dns_names=dns,
            ip_addresses=ips,
            opts=child,
        )
        server = tls.LocallySignedCert(
            f"{name}-server",
            cert_request_pem=request.cert_request_pem,
            ca_private_key_pem=ca_key.private_key_pem,
            ca_cert_pem=ca.cert_pem,
            validity_period_hours=SERVER_VALIDITY_HOURS,
            early_renewal_hours=RENEW_BEFORE_HOURS,
            allowed_uses=SERVER_USES,
            opts=child,
        )
        self.cert_pem = server.cert_pem
        self.key_pem = secret_output(key.private_key_pem)
        self.ca_pem = ca.cert_pem
