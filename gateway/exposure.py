"""A gateway others can reach never runs on the published demo keys.

``config/gateway.yaml`` and the README publish two keys (``sk-gw-demo-admin``, ``sk-gw-demo-member``) so that
``make run`` works at once. A catalogue that still holds one of them is fine on loopback; on any other address
anyone who has read the README is an admin. ``python -m gateway`` refuses that start unless ``GATEWAY_DEMO=1``
says the exposure is meant (a demo container, say).
"""

import ipaddress
from collections.abc import Iterable

from config.catalog import Tenant
from gateway.catalog import hash_key

DEMO_KEYS = ("sk-gw-demo-admin", "sk-gw-demo-member")
_DEMO_HASHES = frozenset(hash_key(key) for key in DEMO_KEYS)


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches; a host name other than ``localhost`` may resolve to any
    address, so it counts as reachable."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def demo_key_names(tenants: Iterable[Tenant]) -> list[str]:
    """The catalogue names of the keys whose hash is a published demo key's."""
    return [key.name for tenant in tenants for key in tenant.api_keys if key.sha256 in _DEMO_HASHES]


def exposure_problem(host: str, tenants: Iterable[Tenant], demo: bool) -> str | None:
    """Why this start must be refused, or None."""
    if demo or is_loopback(host):
        return None
    names = demo_key_names(tenants)
    if not names:
        return None
    return (
        f"the catalogue holds the published demo key(s) {', '.join(sorted(names))} and the listen address {host!r} "
        "is not loopback: anyone could use them. Replace them (python -m gateway hash-key <new key>), listen on "
        "127.0.0.1, or set GATEWAY_DEMO=1 if this exposure is meant."
    )
