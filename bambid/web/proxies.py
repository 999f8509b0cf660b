"""The client's real address behind a reverse proxy.

Behind nginx every connection comes from the proxy, so the per-address limits
(login throttling, ``/api/tts``, WebSocket connections) would treat the whole
site as one visitor. ``server.trusted_proxies`` names the proxies (CIDR
networks) whose ``X-Forwarded-For`` header is believed: the client is the
right-most address in that header that is not itself a trusted proxy (each
proxy appends the address it received the request from, so entries further
left could have been written by the client). A request from any other peer is
keyed on the peer's own address and its header is ignored, so nobody can
choose their own key by sending the header.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """The CIDR networks of ``values``; ``ValueError`` naming a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an address or CIDR network: {value!r}") from None
    return tuple(networks)


class TrustedProxies:
    """Which peers may tell us the client's address (see the module doc)."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks = parse_networks(networks)

    def trusts(self, address: str) -> bool:
        ip = _address(address)
        return ip is not None and any(ip in network for network in self.networks)

    def client(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address for a connection from ``peer`` that carried
        ``forwarded_for`` (the ``X-Forwarded-For`` header, or None)."""
        if not forwarded_for or not self.trusts(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",")[-32:]]
        for hop in reversed(hops):
            if _address(hop) is None:
                return peer  # a malformed header: keep the proxy's own address
            if not self.trusts(hop):
                return str(_address(hop))
        return peer


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    candidate = text.strip().strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        return None
