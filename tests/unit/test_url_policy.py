"""The URL policy for user-supplied URLs (runtime.batch.urls), with a stand-in resolver: what a name
resolves to decides, so a public-looking name that points inside is refused too."""

from __future__ import annotations

import pytest

from runtime.batch.urls import UrlPolicy, UrlRefusedError

NAMES = {
    "files.example.com": ["93.184.216.34"],
    "rebound.example.com": ["93.184.216.34", "10.0.0.7"],  # one address inside is enough to refuse
    "metadata.example.com": ["169.254.169.254"],
    "v6.example.com": ["2606:4700::1111"],
    "ula.example.com": ["fd00::1"],
    "cgnat.example.com": ["100.64.0.1"],
    "redis": ["172.18.0.5"],  # a compose service name: only ever allowlisted
}


def resolver(host: str, _port: int) -> list[str]:
    if host not in NAMES:
        raise OSError(f"[Errno -2] Name or service not known: {host}")
    return NAMES[host]


def policy(*allow: str) -> UrlPolicy:
    return UrlPolicy.from_entries(allow, resolver=resolver)


@pytest.mark.parametrize(
    "url",
    [
        "https://files.example.com/in.jsonl",
        "http://v6.example.com/x",
        "https://93.184.216.34:8443/x",
        "http://[64:ff9b::5db8:d822]/x",  # NAT64 of 93.184.216.34: what it carries is public
        "http://[2002:5db8:d822::1]/x",  # 6to4 of the same
    ],
)
def test_public_addresses_pass(url: str) -> None:
    policy().check(url, param="input_file_url")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/x", "a loopback address 127.0.0.1"),
        ("http://[::1]:8000/x", "a loopback address ::1"),
        ("http://[::ffff:10.0.0.1]/x", "a private address 10.0.0.1"),
        ("http://[::7f00:1]/x", "a loopback address ::7f00:1 (carrying 127.0.0.1)"),  # IPv4-compatible
        ("http://[::a9fe:a9fe]/x", "a link-local address ::a9fe:a9fe (carrying 169.254.169.254)"),
        ("http://[64:ff9b::7f00:1]/x", "a loopback address 64:ff9b::7f00:1 (carrying 127.0.0.1)"),  # NAT64
        ("http://[64:ff9b::a00:7]/x", "a private address 64:ff9b::a00:7 (carrying 10.0.0.7)"),
        ("http://[64:ff9b:1::808:808]/x", "a local-use NAT64 address 64:ff9b:1::808:808"),  # RFC 8215
        ("http://[2002:7f00:1::1]/x", "a loopback address 2002:7f00:1::1 (carrying 127.0.0.1)"),  # 6to4
        ("http://[2002:a9fe:a9fe::]/x", "(carrying 169.254.169.254)"),
        ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/x", "2001:0:4136:e378:8000:63bf:80ff:fffe"),  # Teredo
        ("http://169.254.169.254/latest", "a link-local address"),
        ("http://192.168.1.20/x", "a private address"),
        ("http://metadata.example.com/x", "a link-local address 169.254.169.254"),
        ("http://rebound.example.com/x", "a private address 10.0.0.7"),
        ("http://ula.example.com/x", "a private address fd00::1"),
        ("http://cgnat.example.com/x", "100.64.0.1"),
        ("http://224.0.0.1/x", "a multicast address"),
        ("http://0.0.0.0:8100/x", "0.0.0.0"),
        ("http://redis:6379/", "'redis' is a cluster-internal name"),
        ("http://localhost:8100/", "'localhost' is a cluster-internal name"),
        ("http://batch-api.app-cognition.svc.cluster.local/", "cluster-internal name"),
        ("http://nowhere.example.com/x", "cannot resolve 'nowhere.example.com'"),
        ("file:///etc/passwd", "only http(s) URLs"),
        ("gopher://files.example.com/x", "only http(s) URLs"),
        ("http:///x", "no host"),
        ("http://files.example.com:99999/x", "bad port"),
    ],
)
def test_internal_and_odd_urls_are_refused_naming_url_and_reason(url: str, why: str) -> None:
    with pytest.raises(UrlRefusedError) as refused:
        policy().check(url, param="webhook_url")
    assert str(refused.value).startswith(f"webhook_url {url!r}: ") and why in str(refused.value)


def test_the_allowlist_admits_a_host_a_host_and_port_or_a_network() -> None:
    assert [str(a) for a in policy("redis").check("http://redis:6379/", param="p")] == ["172.18.0.5"]
    policy("127.0.0.1:8080").check("http://127.0.0.1:8080/x", param="p")
    with pytest.raises(UrlRefusedError):
        policy("127.0.0.1:8080").check("http://127.0.0.1:8081/x", param="p")  # another port is not admitted
    policy("10.0.0.0/8").check("http://rebound.example.com/x", param="p")
    policy("169.254.169.254").check("http://metadata.example.com/", param="p")
    policy("10.0.0.0/8").check("http://[64:ff9b::a00:7]/x", param="p")  # what it carries is admitted
    with pytest.raises(ValueError, match=r"BATCH_URL_ALLOWLIST entry '10\.0\.0\.0/33': not a CIDR"):
        policy("10.0.0.0/33")
