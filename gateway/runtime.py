"""The gateway's runtime objects for one app: store, catalogue, upstream session, providers, policy chains.

Built (and validated: catalogue references, policy params) when the app is created, so a broken catalogue
fails the start; connections are opened in ``start`` and closed in ``stop`` by the app's lifespan.
"""

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from starlette.types import Send

from config import Catalogue, Settings
from config.deployments import Timeouts
from gateway.agents import AgentRegistry, Agents, load_agent_policies
from gateway.audit import AuditLog
from gateway.breaker import CircuitBreakers
from gateway.catalog import Catalog, Principal
from gateway.context import RequestContext, Surface
from gateway.dispatch import Dispatcher
from gateway.errors import GatewayError, StoreUnavailable
from gateway.files import Files, open_blobs
from gateway.http import bearer_key
from gateway.idempotency import IdempotencyRecords
from gateway.inflight import InFlight
from gateway.jobs import Jobs
from gateway.logs import log_request
from gateway.metrics import Metrics, answered_status
from gateway.policy import PolicyChain, PolicyConfigError, load_policy
from gateway.pricing import PriceBook
from gateway.providers import build_providers
from gateway.responses.engine import ResponsesEngine
from gateway.responses.loop import ToolLoop
from gateway.responses.records import EVICTABLE, ResponseRecords
from gateway.responses.service import ResponsesService
from gateway.skills.records import EVICTABLE as EXECUTIONS_EVICTABLE
from gateway.skills.records import ExecutionRecords
from gateway.skills.registry import Skills
from gateway.skills.runner import Runner
from gateway.skills.tools import skill_servers
from gateway.skills.worker import ExecutionWorker
from gateway.spend import SpendCounters
from gateway.store import open_store
from gateway.store.timed import TimedStore
from gateway.targets import resolve_target
from gateway.tools import Tools
from gateway.tracing import Tracing
from gateway.upstream import make_session

log = logging.getLogger("gateway")


class Gateway:
    """Everything a request handler needs, owned by one app instance (no module-level state)."""

    def __init__(self, settings: Settings, catalogue: Catalogue) -> None:
        self.settings = settings
        redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
        self.metrics = Metrics() if settings.metrics_enabled else None
        evictable = EVICTABLE + EXECUTIONS_EVICTABLE
        self.store = open_store(redis_url, settings.redis_prefix, settings.memory_store_max_bytes, evictable)
        if self.metrics is not None and self.store.remote:  # the in-memory store answers in microseconds, never fails
            self.store = TimedStore(self.store, self.metrics.store_op)
        self.catalog = Catalog(catalogue, self.store)
        self.prices = PriceBook(catalogue)
        self.spend = SpendCounters()  # the usage route's reader (the cost policy has its own writer)
        self.idempotency = IdempotencyRecords(self.store, settings.idempotency_ttl_seconds)
        self.audit = AuditLog(self.store)
        self.chains: dict[str, PolicyChain] = {}
        for tenant in catalogue.tenants:
            for space in tenant.spaces:
                specs = space.policies if space.policies is not None else tenant.policies
                self.chains[str(space.id)] = PolicyChain([load_policy(s) for s in specs])
        self.timeouts = Timeouts(
            connect=settings.upstream_connect_timeout,
            first_byte=settings.upstream_first_byte_timeout,
            idle=settings.upstream_read_timeout,
        )
        self.breakers = CircuitBreakers(self.store)
        self.inflight = InFlight()
        self.session: aiohttp.ClientSession | None = None
        self.dispatcher = Dispatcher({}, self.breakers, self.timeouts)
        if self.metrics is not None:
            self.metrics.count_inflight(self.inflight.__len__)
            self.dispatcher.metrics, self.breakers.on_state = self.metrics, self.metrics.circuit
        self.tracing = Tracing(settings) if settings.traces else None  # the app's own exporter (nothing global)
        self.dispatcher.tracing = self.tracing
        records = ResponseRecords(self.store, settings.response_ttl_seconds)
        self.tools = Tools(catalogue, settings)  # MCP sessions and HTTP tools' clients; secret headers read here
        engine = ResponsesEngine(self.dispatcher, records, self.inflight)
        engine.loop = ToolLoop(engine, self.metrics)
        self.jobs = Jobs(self.store, settings.heartbeat_seconds)
        self.responses = ResponsesService(engine, records, self.prices, self.inflight, self.jobs, self.tools)
        self.agents = Agents(AgentRegistry(catalogue, self.store), records)
        _preload_agent_policies(self.agents, catalogue)
        self.responses.resolve = self.resolve
        self.skills = Skills(catalogue, self.store)
        self.executions = ExecutionRecords(self.store, settings.response_ttl_seconds)
        self.files = Files(self.store, open_blobs(settings, self.store), settings)  # POST /v1/files
        self.runner = Runner(self, self.skills)  # an execution's model turns (the worker's, and sub-executions')
        self.tools.skill_servers = lambda ctx, tools: skill_servers(self, ctx, tools)
        self.worker = ExecutionWorker(self) if settings.executions_worker else None
        self._heartbeat: asyncio.Task[None] | None = None
        self.draining = False  # set at SIGTERM: /readyz answers 503 from then on

    async def start(self) -> None:
        s = self.settings
        self.session = make_session(
            max_connections=s.upstream_max_connections,
            connect_timeout=s.upstream_connect_timeout,
            read_timeout=s.upstream_read_timeout,
        )
        self.dispatcher.providers = build_providers(self.session, self.timeouts)
        if self.tracing is not None:  # spans exported from the loop; the trace context goes upstream with every call
            await self.tracing.start()
            for provider in self.dispatcher.providers.values():
                if hasattr(provider, "trace_headers"):
                    provider.trace_headers = self.tracing.upstream_headers
        await self.store.ping()
        await self.catalog.seed()
        await self.agents.registry.seed()
        self._heartbeat = asyncio.ensure_future(self.jobs.heartbeat())
        if self.metrics is not None:
            self.metrics.start()
        if self.worker is not None:
            self.worker.start()

    async def drain(self, grace: float | None = None) -> int:
        """Stop taking requests (``/readyz`` says so at once) and let those in flight, background responses
        included, finish within ``grace`` (default: the setting); then stop what is left with its error event,
        its holds released while the store is open, and hand the replica's jobs back (``Jobs.hand_back``).
        Returns how many requests had still not ended. Safe to call again."""
        s = self.settings
        self.draining = True
        grace = s.shutdown_grace_seconds if grace is None else grace
        if self.worker is not None:  # its executions get the grace; the rest are taken over by other workers
            await self.worker.stop(grace)
        left = await self.inflight.drain(grace, s.shutdown_cleanup_seconds)
        if left:
            log.warning("shutdown: %d request(s) had not ended after their cleanup time", left)
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, StoreUnavailable):
                await heartbeat
            try:
                await self.jobs.hand_back()
            except StoreUnavailable as exc:
                log.warning("shutdown: could not withdraw this replica's liveness key: %s", exc.message)
        return left

    async def stop(self) -> None:
        # requests still running end first (a stream with its error event), releasing what they hold while
        # the store is open; after SIGTERM (gateway.__main__) the drain has run already, and served by plain
        # uvicorn, its graceful timeout was the grace
        await self.drain(grace=0)
        owned = [p for chain in self.chains.values() for p in chain.policies] + self.agents.own_policies()
        for policy in owned:  # policies holding clients of their own (webhooks) close them
            aclose = getattr(policy, "aclose", None)
            if aclose is not None:
                await aclose()
        await self.tools.aclose()
        if self.session is not None:
            await self.session.close()
        await self.store.close()
        if self.metrics is not None:  # (multiprocess mode: the last values into this process's files)
            await self.metrics.stop()
        if self.tracing is not None:  # the last spans exported (bounded by the exporter's timeout)
            await self.tracing.shutdown()

    def context(
        self,
        headers: dict[bytes, bytes],
        route: str,
        body: dict[str, Any],
        surface: Surface,
        space_id: str | None = None,
    ) -> RequestContext:
        """Authenticate the caller and pick the space: the one named by the route, else ``OpenAI-Project`` /
        ``X-Space-Id``, else the key's default."""
        principal = self.catalog.authenticate(bearer_key(headers))
        if space_id is None:
            named = headers.get(b"openai-project") or headers.get(b"x-space-id")
            space_id = named.decode("latin-1") if named else None
        request_id = (headers.get(b"x-request-id") or b"").decode("latin-1")[:128] or os.urandom(12).hex()
        return self.context_for(principal, space_id, route, body, surface, headers, request_id)

    def context_for(
        self,
        principal: Principal,
        space_id: str | None,
        route: str,
        body: dict[str, Any],
        surface: Surface,
        headers: dict[bytes, bytes] | None = None,
        request_id: str | None = None,
    ) -> RequestContext:
        """The context of a request made as ``principal`` in a space (its key's rights checked again): a
        caller's, or work the gateway runs for one later (a skill execution's model turns)."""
        space = self.catalog.space_for(principal, space_id)
        ctx = RequestContext(
            request_id=request_id or os.urandom(12).hex(),
            route=route,
            principal=principal,
            space=space,
            catalog=self.catalog,
            store=self.store,
            body=body,
            headers=headers or {},
            prices=self.prices,
            surface=surface,
        )
        if self.tracing is not None:
            self.tracing.bind(ctx)
        return ctx

    async def run_chain(self, ctx: RequestContext, send: Send, call: Callable[[Send], Awaitable[None]]) -> None:
        """The request's target resolved (``gateway.targets``), then the space's policy chain around ``call``,
        tracked so that a shutdown can stop it cleanly: only ``call`` (the upstream work) is interruptible, never a
        policy's store round trip."""
        inflight = self.inflight

        async def interruptible(out: Send) -> None:
            with inflight.interruptible():
                await call(out)

        error: BaseException | None = None
        metrics, chain = self.metrics, None
        try:
            await self.resolve(ctx)  # once, before any policy (done already on the Responses routes)
            chain = self.agents.chain(ctx, self.chains[ctx.space_id])
            with inflight.track():
                if metrics is not None:
                    metrics.started(ctx)
                await chain.run(ctx, send, interruptible)
        except BaseException as exc:
            error = exc
            if isinstance(exc, GatewayError):
                exc.logged = True  # (the exception handlers would log it again)
            raise
        finally:
            if metrics is not None and chain is not None:
                metrics.finish(ctx, chain, answered_status(ctx, error))
            log_request(ctx, ctx.started_at, error)

    async def resolve(self, ctx: RequestContext) -> None:
        """The request's target (``gateway.targets``): a tenant model, or an agent version; once per request."""
        await resolve_target(ctx, self.agents)


def _preload_agent_policies(agents: Agents, catalogue: Catalogue) -> None:
    """Build the YAML agents' own policies, so a wrong one fails the start naming where it is."""
    for t, tenant in enumerate(catalogue.tenants):
        for a, agent in enumerate(tenant.agents):
            for v, version in enumerate(agent.versions):
                try:
                    policies = load_agent_policies(version.policies)
                except PolicyConfigError as exc:
                    raise PolicyConfigError(f"tenants[{t}].agents[{a}].versions[{v}].policies: {exc}") from None
                agents.preload(str(tenant.id), agent.key, version.version, policies)
