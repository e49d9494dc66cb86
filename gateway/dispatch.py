"""Which deployment answers: ordered fallbacks or weighted choice, retries with backoff and jitter before the
first byte reached the client, upstream ``Retry-After`` honoured, first-byte timeouts, circuit breaking.

Nothing is retried once the caller has received a byte: for streams, an attempt ends when the first chunk
arrived, and only then are headers sent to the caller.
"""

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

from config.catalog import TenantModel
from config.deployments import Deployment, Routing, Timeouts
from gateway.breaker import CircuitBreakers
from gateway.errors import UpstreamError, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from gateway.providers import Provider, UpstreamStream
from gateway.tracing import Tracing

if TYPE_CHECKING:
    from gateway.metrics import DeploymentMeter, Metrics

T = TypeVar("T")
Opened = tuple[UpstreamStream, AsyncIterator[bytes], bytes]  # the stream to close, the rest, the first chunk


def order(model: TenantModel, rng: random.Random) -> list[tuple[int, Deployment]]:
    """Deployments in the order they will be tried: as configured, or drawn by weight without replacement."""
    indexed = list(enumerate(model.deployments))
    if model.routing.strategy == "fallback" or len(indexed) < 2:
        return indexed
    remaining, out = [d for d in indexed if d[1].weight > 0], []
    while remaining:
        pick = rng.choices(remaining, weights=[d[1].weight for d in remaining])[0]
        remaining.remove(pick)
        out.append(pick)
    return out + [d for d in indexed if d[1].weight == 0]


def retryable(exc: UpstreamError) -> bool:
    """Connection failures, timeouts, 429 and 5xx are worth another attempt; other 4xx are the caller's."""
    return not isinstance(exc, UpstreamRejected) or exc.status_code == 429


def retry_delay(attempt: int, exc: UpstreamError, routing: Routing, rng: random.Random) -> float | None:
    """Seconds to wait before the next attempt on the same deployment; None: move to the next deployment."""
    if attempt >= routing.retries:
        return None
    delay: float = routing.backoff * (2**attempt) * (0.5 + rng.random())
    retry_after = exc.headers.get("Retry-After")
    if retry_after:
        try:
            wanted = float(retry_after)
        except ValueError:
            wanted = routing.max_retry_after + 1
        if wanted > routing.max_retry_after:
            return None
        delay = max(delay, wanted)  # never sooner than the upstream asked
    return delay


class Dispatcher:
    """Runs one upstream operation across a tenant model's deployments."""

    def __init__(self, providers: dict[str, Provider], breakers: CircuitBreakers, defaults: Timeouts) -> None:
        self.providers = providers  # by deployment type (gateway.providers.FAMILY), set when the app starts
        self.breakers = breakers
        self.defaults = defaults
        self.rng = random.Random()
        self._keys: dict[tuple[object, int], str] = {}
        self.metrics: Metrics | None = None  # upstream durations, errors, retries, fallbacks (gateway.metrics)
        self.tracing: Tracing | None = None  # set by the runtime when traces are on

    def provider(self, dep: Deployment) -> Provider:
        return self.providers[dep.type]

    def first_byte(self, dep: Deployment) -> float | None:
        """The first-byte deadline of one attempt, or None when the idle timeout already implies it (the
        upstream client's read timeout then covers the wait, with no timer of our own per request)."""
        first_byte = dep.timeouts.first_byte or self.defaults.first_byte or 600.0
        idle = dep.timeouts.idle or self.defaults.idle
        return None if idle is not None and dep.type != "fake" and first_byte >= idle else first_byte

    def _key(self, model: TenantModel, index: int) -> str:
        key = self._keys.get((model.id, index))
        if key is None:
            key = self._keys[(model.id, index)] = f"{model.id}:{index}"
        return key

    async def _traced(self, dep: Deployment, attempt: Callable[[Deployment], Awaitable[T]]) -> T:
        request = self.tracing.request.get() if self.tracing is not None else None
        if request is not None and request.recording:  # a span of the request's model call (gateway.tracing)
            return await request.attempt(dep, self._deadline(dep, attempt))
        return await self._deadline(dep, attempt)

    async def _deadline(self, dep: Deployment, attempt: Callable[[Deployment], Awaitable[T]]) -> T:
        deadline = self.first_byte(dep)
        if deadline is None:
            return await attempt(dep)
        try:
            async with asyncio.timeout(deadline):
                return await attempt(dep)
        except TimeoutError:
            raise UpstreamTimeout("Upstream did not answer in time.") from None

    async def _attempt(
        self, dep: Deployment, attempt: Callable[[Deployment], Awaitable[T]], meter: "DeploymentMeter | None"
    ) -> T:
        if meter is None:
            return await self._traced(dep, attempt)
        start = perf_counter()
        try:
            result = await self._traced(dep, attempt)
        except UpstreamError as exc:
            meter.failed(exc.status_code, perf_counter() - start)
            raise
        meter.duration.observe(perf_counter() - start)
        return result

    async def run(self, model: TenantModel, attempt: Callable[[Deployment], Awaitable[T]]) -> T:
        last: UpstreamError | None = None
        breakers, metrics = self.breakers, self.metrics
        for position, (index, dep) in enumerate(order(model, self.rng)):
            key = self._key(model, index)
            if not (breakers.known_closed(key) or await breakers.allow(key, model.routing.breaker)):
                continue
            meter = None if metrics is None else metrics.deployment(key, model.alias)
            if position and metrics is not None:
                metrics.fallback(model.alias)
            for n in range(model.routing.retries + 1):
                try:
                    result = await self._attempt(dep, attempt, meter)
                except UpstreamError as err:
                    exc: UpstreamError = err
                else:
                    if breakers.needs_report(key):
                        await breakers.success(key)
                    return result
                if not retryable(exc):
                    raise exc
                await self.breakers.failure(key, model.routing.breaker)
                last = exc
                delay = retry_delay(n, exc, model.routing, self.rng)
                if delay is None:
                    break
                _retrying(meter)
                await asyncio.sleep(delay)
        raise last or _ejected(model)

    async def chat(self, model: TenantModel, body: dict[str, Any]) -> tuple[Deployment, bytes]:
        """A whole completion from the first deployment that gives one (and that deployment)."""

        async def attempt(dep: Deployment) -> tuple[Deployment, bytes]:
            return dep, await self.provider(dep).chat(dep, {**body, "model": dep.model})

        return await self.run(model, attempt)

    async def stream(self, model: TenantModel, body: dict[str, Any]) -> tuple[Deployment, Opened]:
        """An open Chat Completions stream whose first chunk already arrived (and its deployment)."""

        def open_stream(dep: Deployment) -> Awaitable[UpstreamStream]:
            return self.provider(dep).open_stream(dep, {**body, "model": dep.model})

        return await self.stream_with(model, open_stream)

    async def stream_with(
        self, model: TenantModel, open_stream: Callable[[Deployment], Awaitable[UpstreamStream]]
    ) -> tuple[Deployment, Opened]:
        """Any upstream stream, opened by ``open_stream(deployment)``, once its first chunk arrived."""

        async def attempt(dep: Deployment) -> tuple[Deployment, Opened]:
            stream = await open_stream(dep)
            try:
                chunks = aiter(stream)
                first = await anext(chunks, b"")
                if not first:
                    raise UpstreamError("Upstream closed the stream before sending anything.")
            except BaseException:
                await stream.close()
                raise
            return dep, (stream, chunks, first)

        return await self.run(model, attempt)


def _ejected(model: TenantModel) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f"Every deployment of model '{model.alias}' is temporarily ejected after repeated failures.",
        status_code=503,
        headers={"Retry-After": str(int(model.routing.breaker.cooldown))},
    )


def _retrying(meter: "DeploymentMeter | None") -> None:
    if meter is not None:
        meter.retries.inc()
