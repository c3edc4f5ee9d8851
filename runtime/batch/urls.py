"""Which user-supplied URLs the batch service may fetch or call (input_file_url, webhook_url).

Without this, anyone with a key could make the service fetch its own Redis, the cloud metadata
endpoint (169.254.169.254) or any cluster service, and read the answer back through the error
messages. By default only hosts whose every address is globally routable are allowed: loopback,
link-local, private (RFC 1918, ULA), CGNAT, reserved and multicast addresses are refused, and so
are cluster-internal names (single-label names such as compose service names, `*.svc`,
`*.cluster.local`, `*.internal`, `*.local`, `localhost`). IPv6 forms that carry an IPv4 address
(IPv4-mapped and IPv4-compatible `::/96`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`, Teredo
`2001::/32`) are judged by the address they carry as well, since a NAT64 or 6to4 gateway, or a
stack that maps them, delivers them there; the local-use NAT64 prefix `64:ff9b:1::/48` (RFC 8215)
is never global. The allowlist setting
(`BATCH_URL_ALLOWLIST`) names exceptions: `host`, `host:port` or a CIDR such as `10.20.0.0/16`.

The check resolves the name, and the request goes to an address the check accepted (`Pinned`:
that address in the URL, the name in the Host header and as the TLS server name), so a name that
resolves elsewhere a moment later (DNS rebinding) changes nothing. Each redirect is a new URL,
checked and pinned again before it is followed.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
INTERNAL_SUFFIXES = (".svc", ".cluster.local", ".internal", ".local", ".localdomain", ".lan", ".home.arpa")
Resolver = Callable[[str, int], list[str]]


class UrlRefusedError(ValueError):
    """A user-supplied URL the service will not fetch or call; the message names it and why."""


@dataclass(frozen=True)
class Pinned:
    """A request to a checked URL, sent to the address the check accepted rather than a fresh lookup."""

    url: str  # the URL with the accepted address in place of the host name
    host: str  # the Host header: the name (and port) the user gave
    server_name: str  # TLS: the name the certificate must carry (SNI)

    @property
    def headers(self) -> dict[str, str]:
        return {"Host": self.host}

    @property
    def extensions(self) -> dict[str, str]:
        return {"sni_hostname": self.server_name}


def pin(url: str, address: IpAddress) -> Pinned:
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    given = parts.netloc.rsplit("@", 1)[-1]  # the Host header never carries userinfo
    return Pinned(urlunsplit(parts._replace(netloc=netloc)), given, host)


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

    def pinned(self, url: str, *, param: str) -> Pinned:
        """`check`, then the request to make: to the first address the check accepted."""
        return pin(url, self.check(url, param=param)[0])

    def check(self, url: str, *, param: str) -> list[IpAddress]:
        """The addresses the service may connect to for `url`; UrlRefusedError naming `param` and the
        URL unless there is one and every address the name has is allowed."""
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
        literal = _ip(host)
        if host in self.allowlist or f"{host}:{port}" in self.allowlist:
            return [literal] if literal is not None else self._resolve(url, param, host, port)
        if literal is None and ("." not in host or host == "localhost" or host.endswith(INTERNAL_SUFFIXES)):
            raise UrlRefusedError(
                f"{param} {url!r}: {host!r} is a cluster-internal name; add it to BATCH_URL_ALLOWLIST to allow it"
            )
        addresses = [literal] if literal is not None else self._resolve(url, param, host, port)
        for address in addresses:
            if self._allowed_network(address):
                continue
            embedded = _embedded_ipv4(address)
            for judged in (address, *embedded):
                if not _global(judged) and not self._allowed_network(judged):
                    carried = f" (carrying {judged})" if judged is not address else ""
                    raise UrlRefusedError(
                        f"{param} {url!r}: {host!r} is {_kind(judged)} address {address}{carried}, which is "
                        "refused; add it to BATCH_URL_ALLOWLIST to allow it"
                    )
        return addresses

    def _resolve(self, url: str, param: str, host: str, port: int) -> list[IpAddress]:
        try:
            found = [a for a in (_ip(text) for text in self.resolver(host, port)) if a is not None]
        except OSError as exc:
            raise UrlRefusedError(f"{param} {url!r}: cannot resolve {host!r} ({exc})") from None
        if not found:
            raise UrlRefusedError(f"{param} {url!r}: {host!r} has no address")
        return found

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


IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: not global; Python 3.11 says it is


def _embedded_ipv4(address: IpAddress) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address carries, where a gateway or the host would deliver it."""
    if not isinstance(address, ipaddress.IPv6Address):
        return ()
    last32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in IPV4_COMPATIBLE or address in NAT64_WELL_KNOWN:
        return (last32,)
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if address.teredo is not None:
        return address.teredo  # (server, client)
    return ()


def _global(address: IpAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address in NAT64_LOCAL_USE:
        return False
    return address.is_global and not address.is_multicast


def _kind(address: IpAddress) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address in NAT64_LOCAL_USE:
        return "a local-use NAT64"
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
