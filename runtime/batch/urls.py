"""Which user-supplied URLs the batch service may fetch or call (input_file_url, webhook_url).

Without this, anyone with a key could make the service fetch its own Redis, the cloud metadata
endpoint (169.254.169.254) or any cluster service, and read the answer back through the error
messages. By default only hosts whose every address is globally routable are allowed: loopback,
link-local, private (RFC 1918, ULA), CGNAT, reserved and multicast addresses are refused, and so
are cluster-internal names (single-label names such as compose service names, `*.svc`,
`*.cluster.local`, `*.internal`, `*.local`, `localhost`). The allowlist setting
(`BATCH_URL_ALLOWLIST`) names exceptions: `host`, `host:port` or a CIDR such as `10.20.0.0/16`.

The check resolves the name; each redirect is checked again before it is followed. What it
cannot stop: a name that resolves to another address between the check and the connection
(DNS rebinding within the resolver's TTL).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
INTERNAL_SUFFIXES = (".svc", ".cluster.local", ".internal", ".local", ".localdomain", ".lan", ".home.arpa")
Resolver = Callable[[str, int], list[str]]


class UrlRefusedError(ValueError):
    """A user-supplied URL the service will not fetch or call; the message names it and why."""


def resolve(host: str, port: int) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)})


@dataclass(frozen=True)
class UrlPolicy:
    allowlist: tuple[str, ...] = ()
    resolver: Resolver = resolve

    @classmethod
    def from_entries(cls, entries: Iterable[str], resolver: Resolver = resolve) -> UrlPolicy:
        cleaned = tuple(e.strip().lower() for e in entries if e.strip())
        for entry in cleaned:
            if "/" in entry:
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError as exc:
                    raise ValueError(f"BATCH_URL_ALLOWLIST entry {entry!r}: not a CIDR ({exc})") from None
        return cls(cleaned, resolver)

    def check(self, url: str, *, param: str) -> None:
        """Raise UrlRefusedError naming `param` and the URL unless the service may connect to it."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise UrlRefusedError(f"{param} {url!r}: only http(s) URLs are allowed")
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            raise UrlRefusedError(f"{param} {url!r}: no host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise UrlRefusedError(f"{param} {url!r}: bad port") from None
        if host in self.allowlist or f"{host}:{port}" in self.allowlist:
            return
        literal = _ip(host)
        if literal is None and ("." not in host or host == "localhost" or host.endswith(INTERNAL_SUFFIXES)):
            raise UrlRefusedError(
                f"{param} {url!r}: {host!r} is a cluster-internal name; add it to BATCH_URL_ALLOWLIST to allow it"
            )
        try:
            addresses = [literal] if literal is not None else [_ip(a) for a in self.resolver(host, port)]
        except OSError as exc:
            raise UrlRefusedError(f"{param} {url!r}: cannot resolve {host!r} ({exc})") from None
        for address in addresses:
            if address is None or self._allowed_network(address):
                continue
            if not address.is_global or address.is_multicast:
                raise UrlRefusedError(
                    f"{param} {url!r}: {host!r} is {_kind(address)} address {address}, which is refused; "
                    "add it to BATCH_URL_ALLOWLIST to allow it"
                )

    def _allowed_network(self, address: IpAddress) -> bool:
        for entry in self.allowlist:
            if "/" in entry and address in ipaddress.ip_network(entry, strict=False):
                return True
            if _ip(entry) == address:
                return True
        return False


def _ip(text: str) -> IpAddress | None:
    try:
        address = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
    return address


def _kind(address: IpAddress) -> str:
    for attribute, kind in (
        ("is_loopback", "a loopback"),
        ("is_link_local", "a link-local"),
        ("is_multicast", "a multicast"),
        ("is_private", "a private"),
        ("is_reserved", "a reserved"),
    ):
        if getattr(address, attribute):
            return kind
    return "a non-global"
