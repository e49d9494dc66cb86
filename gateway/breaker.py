"""Circuit breaking per deployment, with its state in the store so every replica ejects together.

Closed: requests flow; each retryable failure counts within a window. Open: ``failures`` in a window eject
the deployment for ``cooldown`` seconds. Then half-open: exactly one request (across replicas, an atomic
claim) probes it; success closes the circuit, failure opens it again.

The open state is read from the store at most once a second per deployment and process (and again right
after any failure), so a healthy deployment costs no store round trip on most requests, and a replica sends
at most one more request to a deployment another replica ejected.

While the store cannot be reached the breakers act on this process's own state (the last open state seen,
failures counted here, the probe claimed here): a breaker is about the upstream's health, so a store outage
never fails a request by itself; whether the request may run without the store is the policies' decision
(``on_store_error``), taken before the upstream call.
"""

import logging
import time
from collections.abc import Callable

from config.deployments import Breaker
from gateway.errors import StoreUnavailable
from gateway.store import Store

log = logging.getLogger("gateway.breaker")

_RECHECK_SECONDS = 1.0


class CircuitBreakers:
    """All deployments' breakers of one app."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._seen: dict[str, tuple[float, float]] = {}  # key -> (checked at, open until) local cache
        self._probing: set[str] = set()
        self._fails: dict[str, tuple[float, int]] = {}  # key -> (window start, count): counted here, store down
        self._store_down = False  # logged once per outage
        self.on_state: Callable[[str, int], None] | None = None  # (key, 0 closed | 1 open | 2 half-open): metrics

    def known_closed(self, key: str) -> bool:
        """The cheap check of the hot path: closed as of a fresh local look, so no store read is due."""
        seen = self._seen.get(key)
        return seen is not None and seen[1] == 0.0 and time.time() - seen[0] <= _RECHECK_SECONDS

    def needs_report(self, key: str) -> bool:
        """Whether a success must be written to the store (a probe, or a circuit seen open)."""
        return key in self._probing or self._seen.get(key, (0.0, 0.0))[1] != 0.0

    async def allow(self, key: str, cfg: Breaker) -> bool:
        """May a request go to this deployment now? In half-open state only the one probe may."""
        now = time.time()
        checked, open_until = self._seen.get(key, (0.0, 0.0))
        if now - checked > _RECHECK_SECONDS:
            try:
                raw = await self.store.get(f"cb:{key}:open")
                open_until = float(raw) if raw else 0.0
                self._store_back()
            except StoreUnavailable:
                self._went_down()  # keep the last state seen; ask again in a second
            before = self._seen.get(key)
            if before is None or open_until != before[1]:  # first seen, or another replica opened or closed it
                self._report(key, 1 if open_until else 0)
            self._seen[key] = (now, open_until)
        if open_until == 0.0:
            return True
        if now < open_until:
            return False
        try:
            claimed = await self.store.set_nx(f"cb:{key}:probe", b"1", cfg.cooldown)
        except StoreUnavailable:
            self._went_down()
            claimed = key not in self._probing  # one probe at a time from this process
        if claimed:
            self._probing.add(key)
        self._report(key, 2 if claimed else 1)
        return claimed

    async def success(self, key: str) -> None:
        """Close the circuit after a successful probe (or a success while it was open elsewhere)."""
        if key in self._probing or self._seen.get(key, (0.0, 0.0))[1]:
            self._probing.discard(key)
            self._fails.pop(key, None)
            try:
                await self.store.delete(f"cb:{key}:open", f"cb:{key}:probe", f"cb:{key}:fails")
            except StoreUnavailable:
                self._went_down()
            self._seen[key] = (time.time(), 0.0)
            self._report(key, 0)

    async def failure(self, key: str, cfg: Breaker) -> None:
        """Count a retryable failure; open the circuit when the window's count reaches the threshold."""
        probing = key in self._probing
        self._probing.discard(key)
        seen = self._seen.pop(key, None)  # read the shared state again next time: another replica may have opened it
        try:
            fails = await self.store.incr(f"cb:{key}:fails", 1, ttl=cfg.window)
        except StoreUnavailable:
            self._went_down()
            fails = self._count_here(key, cfg)
            if seen is not None:
                self._seen[key] = (0.0, seen[1])  # no shared state to read: keep the state seen
        if probing or fails >= cfg.failures:
            open_until = time.time() + cfg.cooldown
            self._fails.pop(key, None)
            self._seen[key] = (time.time(), open_until)
            self._report(key, 1)
            try:
                await self.store.set(f"cb:{key}:open", repr(open_until).encode(), ttl=cfg.cooldown * 20)
                await self.store.delete(f"cb:{key}:probe", f"cb:{key}:fails")
            except StoreUnavailable:
                self._went_down()

    def _report(self, key: str, state: int) -> None:
        if self.on_state is not None:
            self.on_state(key, state)

    def _count_here(self, key: str, cfg: Breaker) -> int:
        now = time.time()
        start, count = self._fails.get(key, (now, 0))
        if now - start > cfg.window:
            start, count = now, 0
        self._fails[key] = (start, count + 1)
        return count + 1

    def _went_down(self) -> None:
        if not self._store_down:
            self._store_down = True
            log.warning("circuit breakers act on this process's own state: the store is unreachable")

    def _store_back(self) -> None:
        self._store_down = False
