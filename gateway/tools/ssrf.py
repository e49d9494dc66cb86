"""Which addresses a tool may connect to, decided where the connection is made.

A URL may be reached when it is http(s) without userinfo, on a sane port, and every address its host resolves to
is public: private, loopback, link-local (the metadata address 169.254.169.254 among them), unique-local, shared
(CGNAT), multicast, reserved and unspecified addresses are refused, and so are IPv6 forms that embed one
(IPv4-mapped, 6to4, Teredo, NAT64), unless the space's ``mcp.allow_private`` names that host or address
explicitly. One private address among the answers refuses the host: a name must not be half internal.

The check is made again by the network backend of every client the tools use (``pinned_client``; and
``open_pinned``, the connections of the MCP sessions' own ``tools/call``s), at connect time, and the connection
goes to the address that was checked, not to a fresh resolution: a name that resolves to a public address for
the check and to a loopback one for the connection (DNS rebinding) cannot get through.
Nothing is connected before the check passes. Clients never follow redirects by themselves (see docs/tools.md).
"""

import asyncio
import functools
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpcore2
import httpx2

from config.tools import url_problem

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_SHOWN = 100  # characters of a caller's URL or host repeated in a message
MAX_ADDRESSES = 16  # addresses of one name checked and tried
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
Lookup = Callable[[str, int, float], Awaitable[list["IPAddress"]]]  # host, port, timeout -> its addresses
T = TypeVar("T")


class Refused(httpcore2.ConnectError):
    """A URL or address the space may not reach. A ``ConnectError`` so that, raised at connect time inside a
    client, it surfaces as the client's own connection failure, with this message."""


class Unresolvable(httpcore2.ConnectError):
    """The host does not resolve (or not in time)."""


def shown(text: str) -> str:
    """A caller's text as it may appear in a message: at most ``MAX_SHOWN`` characters, repr-quoted."""
    return repr(text[:MAX_SHOWN] + ("…" if len(text) > MAX_SHOWN else ""))


@dataclass(frozen=True)
class AddressPolicy:
    """What a space allows beyond public addresses: host names (lower case) and networks named in its
    ``mcp.allow_private``. Hashable: it is part of a pooled session's key."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> "AddressPolicy":
        hosts: set[str] = set()
        networks: list[Network] = []
        for entry in entries:
            bare = entry.removeprefix("[").removesuffix("]")
            try:
                networks.append(ipaddress.ip_network(bare, strict=False))
            except ValueError:
                hosts.add(bare.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, host: str, address: IPAddress) -> bool:
        """Whether ``address`` (one of ``host``'s) may be connected to."""
        if self._allowed(host, address):
            return True
        return not any(not _public(a) for a in _embedded(address))

    def _allowed(self, host: str, address: IPAddress) -> bool:
        if host.lower().rstrip(".") in self.hosts:
            return True
        return any(address.version == n.version and address in n for n in self.networks)

    def why_not(self, host: str, address: IPAddress) -> str:
        kind = next((_kind(a) for a in _embedded(address) if not _public(a)), "a non-public")
        return f"{shown(host)} resolves to {address}, {kind} address, which this space does not allow"


def _embedded(address: IPAddress) -> list[IPAddress]:
    """The address and every IPv4 address an IPv6 form carries (mapped, 6to4, Teredo, NAT64)."""
    found: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            found.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            found.append(address.sixtofour)
        if address.teredo is not None:
            found.extend(address.teredo)
        if address in _NAT64:
            found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _public(address: IPAddress) -> bool:
    return address.is_global and not address.is_multicast and not address.is_reserved


def _kind(address: IPAddress) -> str:
    for attr, kind in (
        ("is_loopback", "a loopback"),
        ("is_link_local", "a link-local"),
        ("is_unspecified", "an unspecified"),
        ("is_multicast", "a multicast"),
        ("is_private", "a private"),
        ("is_reserved", "a reserved"),
    ):
        if getattr(address, attr):
            return kind
    return "a non-public"


def split_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of an http(s) URL, or ``Refused`` saying why it is not one."""
    problem = url_problem(url)
    if problem:
        raise Refused(f"the URL {shown(url)} {problem}")
    parts = urlsplit(url)
    assert parts.hostname is not None  # url_problem checked it
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


async def resolve(
    host: str, port: int, policy: AddressPolicy, timeout: float, lookup: Lookup | None = None
) -> list[IPAddress]:
    """The addresses of ``host`` a connection may use, all of them allowed by ``policy``, or ``Refused`` (one
    refused address refuses the host) or ``Unresolvable``. A literal address is checked without a lookup;
    ``lookup`` is the system resolver unless given."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        addresses = (await (lookup or system_lookup)(host, port, timeout))[:MAX_ADDRESSES]
    for address in addresses:
        if not policy.allows(host, address):
            raise Refused(policy.why_not(host, address))
    return addresses


async def system_lookup(host: str, port: int, timeout: float) -> list[IPAddress]:
    """The host's addresses from the system resolver (``getaddrinfo``), within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise Unresolvable(f"{shown(host)} did not resolve within {timeout:g} s") from None
    except (OSError, UnicodeError):
        raise Unresolvable(f"{shown(host)} does not resolve") from None
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise Unresolvable(f"{shown(host)} does not resolve")
    return addresses


async def check_url(url: str, policy: AddressPolicy, timeout: float) -> None:
    """``Refused`` or ``Unresolvable`` unless ``url`` may be connected to now; no connection is made."""
    host, port = split_url(url)
    await resolve(host, port, policy, timeout)


async def open_pinned(
    host: str,
    port: int,
    policy: AddressPolicy,
    dns_timeout: float,
    tls: Callable[[], ssl.SSLContext] | None = None,
    lookup: Lookup | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An asyncio connection to one of ``host``'s addresses, all of them checked first (``resolve``), the socket
    connected to the checked address; TLS (``tls()``'s context) verifies the certificate against ``host``."""
    addresses = await resolve(host, port, policy, dns_timeout, lookup)
    context = tls() if tls is not None else None
    server_hostname = host if context is not None else None

    def connect(address: str) -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        return asyncio.open_connection(address, port, ssl=context, server_hostname=server_hostname)

    return await _first_connected(addresses, connect, (OSError,))


async def _first_connected(
    addresses: Iterable[Any], connect: Callable[[str], Awaitable[T]], failures: tuple[type[Exception], ...]
) -> T:
    """``connect`` to each checked address in turn: the first connection, or the last failure."""
    failure: Exception | None = None
    for address in addresses:
        try:
            return await connect(str(address))
        except failures as exc:
            failure = exc
    assert failure is not None
    raise failure


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS context of every tool connection (no SSL settings from the environment), made once."""
    return httpx2.create_ssl_context(trust_env=False)


class PinnedBackend(httpcore2.AsyncNetworkBackend):
    """httpcore's network backend with the check in ``connect_tcp``: the host is resolved and checked there, and
    the socket connects to one of the checked addresses. TLS still verifies the certificate against the host
    name (httpcore passes the URL's host as the server name), so pinning the address does not weaken TLS."""

    def __init__(self, policy: AddressPolicy, dns_timeout: float, lookup: Lookup | None = None) -> None:
        self.policy = policy
        self.dns_timeout = dns_timeout
        self.lookup = lookup
        self.inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        addresses = await resolve(host, port, self.policy, self.dns_timeout, self.lookup)

        def connect(address: str) -> Awaitable[httpcore2.AsyncNetworkStream]:
            return self.inner.connect_tcp(address, port, timeout, local_address, socket_options)

        return await _first_connected(addresses, connect, (httpcore2.ConnectError, httpcore2.ConnectTimeout))

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.AsyncNetworkStream:
        raise Refused("unix sockets are not reachable from tools")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class _PinnedTransport(httpx2.AsyncHTTPTransport):
    def __init__(self, backend: PinnedBackend, max_connections: int) -> None:
        super().__init__(trust_env=False)  # no proxy from the environment: it would connect somewhere unchecked
        # httpx builds its pool without a way to pass a backend; this one is the same pool with ours
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=tls_context(),
            max_connections=max_connections,
            network_backend=backend,
        )


def pinned_client(
    policy: AddressPolicy,
    dns_timeout: float,
    *,
    headers: dict[str, str] | None = None,
    timeout: httpx2.Timeout | float = 30.0,
    max_connections: int = 100,
    lookup: Lookup | None = None,
) -> httpx2.AsyncClient:
    """An httpx2 client (the MCP SDK's) whose every connection is checked and pinned, which follows no redirect
    and reads no proxy or credentials from the environment, and keeps no cookies between calls."""
    return httpx2.AsyncClient(
        transport=_PinnedTransport(PinnedBackend(policy, dns_timeout, lookup), max_connections),
        headers=headers,
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        cookies=_NoCookies(),
    )


class _NoCookies(httpx2.Cookies):
    """A jar that keeps nothing: a tool server's cookies must not ride on another caller's requests."""

    def extract_cookies(self, response: httpx2.Response) -> None:
        return None
