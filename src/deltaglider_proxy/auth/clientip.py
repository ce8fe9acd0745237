"""One client-IP resolver for every consumer (control-plane.md §5.4, HEAD's model [D]).

Rate limiting, session binding, ``aws:SourceIp`` and the audit log all ask this resolver, so a
client cannot look like one address to the limiter and another to a policy condition.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def normalise(text: str) -> str | None:
    """A canonical address string (IPv4-mapped IPv6 → IPv4), or None if ``text`` is not an IP."""
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def parse_cidrs(text: str) -> tuple[Network, ...]:
    networks: list[Network] = []
    for part in text.split(","):
        if part.strip():
            try:
                networks.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                raise ValueError(f"{part.strip()!r} is not an IP address or CIDR") from None
    return tuple(networks)


@dataclass(frozen=True)
class ClientIpResolver:
    trust_proxy_headers: bool = False
    trusted_proxies: tuple[Network, ...] = ()

    def _trusted(self, ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return any(address.version == n.version and address in n for n in self.trusted_proxies)

    def resolve(self, peer: str | None, headers: Mapping[str, str]) -> str:
        """The caller's address; the TCP peer unless a trusted proxy vouches for another one."""
        peer_ip = normalise(peer) if peer else None
        if not self.trust_proxy_headers:
            return peer_ip or "unknown"
        if self.trusted_proxies:
            if peer_ip is None or not self._trusted(peer_ip):
                return peer_ip or "unknown"
            hops = [normalise(h) for h in headers.get("x-forwarded-for", "").split(",") if h.strip()]
            # Right to left: the nearest hop a trusted proxy did not add itself is the client.
            for hop in reversed(hops):
                if hop is None:
                    break
                if not self._trusted(hop):
                    return hop
            real = normalise(headers.get("x-real-ip", ""))
            return real or peer_ip
        first = headers.get("x-forwarded-for", "").split(",")[0]
        return normalise(first) or normalise(headers.get("x-real-ip", "")) or peer_ip or "unknown"

    def behind_trusted_proxy(self, peer: str | None) -> bool:
        if not self.trust_proxy_headers:
            return False
        peer_ip = normalise(peer) if peer else None
        return not self.trusted_proxies or (peer_ip is not None and self._trusted(peer_ip))
