"""The server's external URL as a client sees it, for absolute URLs in answers (LFS action hrefs).

Order: `server.base_url` when configured; else, only when the TCP peer is a trusted proxy, the
`Forwarded` header (RFC 7239) or `X-Forwarded-Proto/Host/Prefix`; else the request's own scheme
and Host. Headers from untrusted peers are ignored: anyone could send them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache

__all__ = ["TrustedProxies", "client_address", "external_base"]

_HOST = re.compile(r"[A-Za-z0-9.\-]+(?::[0-9]{1,5})?\Z|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?\Z")
_PREFIX = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*/?\Z")


class TrustedProxies:
    def __init__(self, networks: Iterable[str]):
        self._nets = [ipaddress.ip_network(n, strict=False) for n in networks]

    @lru_cache(maxsize=1024)  # noqa: B019 (one instance per server config, kept for the process)
    def trusts(self, peer: str | None) -> bool:
        if not peer or not self._nets:
            return False
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False  # a unix socket peer, etc.
        return any(addr in net for net in self._nets)


def _first(value: str | None) -> str | None:
    if not value:
        return None
    return value.split(",")[0].strip() or None


def _parse_forwarded(value: str) -> dict[str, str]:
    """The first element of a Forwarded header (the hop nearest the client) as a dict."""
    first = value.split(",")[0]
    out = {}
    for pair in first.split(";"):
        k, sep, v = pair.strip().partition("=")
        if sep:
            out[k.strip().lower()] = v.strip().strip('"')
    return out


def client_address(peer: str | None, headers: Mapping[str, str], proxies: TrustedProxies) -> str:
    """The client's IP address: the TCP peer, or, when that is a trusted proxy, the nearest
    untrusted address of the forwarding chain (X-Forwarded-For read right to left, or Forwarded)."""
    if not peer or not proxies.trusts(peer):
        return peer or "-"
    fwd = headers.get("Forwarded")
    if fwd:
        chain = [_parse_forwarded(part).get("for", "") for part in fwd.split(",")]
    else:
        chain = [part.strip() for part in headers.get("X-Forwarded-For", "").split(",")]
    addrs = [a for a in map(_bare_ip, chain) if a]
    for addr in reversed(addrs):
        if not proxies.trusts(addr):
            return addr
    return addrs[0] if addrs else peer


def _bare_ip(value: str) -> str | None:
    """An address from a forwarding header without port or brackets, or None when malformed."""
    value = value.strip().strip('"')
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def external_base(*, scheme: str, host: str | None, peer: str | None, headers: Mapping[str, str],
                  base_url: str, proxies: TrustedProxies) -> str:
    """The URL prefix (scheme://host[/prefix], no trailing slash) under which clients reach us."""
    if base_url:
        return base_url.rstrip("/")
    prefix = ""
    if proxies.trusts(peer):
        fwd = headers.get("Forwarded")
        if fwd:
            parts = _parse_forwarded(fwd)
            f_scheme, f_host = parts.get("proto"), parts.get("host")
        else:
            f_scheme = _first(headers.get("X-Forwarded-Proto"))
            f_host = _first(headers.get("X-Forwarded-Host"))
        # A proxy's value is only taken when well formed; otherwise the request's own is kept.
        if f_scheme in ("http", "https"):
            scheme = f_scheme
        if f_host and _HOST.match(f_host):
            host = f_host
        f_prefix = _first(headers.get("X-Forwarded-Prefix")) or ""
        if f_prefix.startswith("/") and _PREFIX.match(f_prefix):
            prefix = f_prefix
    if scheme not in ("http", "https"):
        scheme = "http"
    if not host or not _HOST.match(host):
        host = "localhost"
    return f"{scheme}://{host}{prefix.rstrip('/')}"
