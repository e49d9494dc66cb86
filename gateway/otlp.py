"""The gateway's own spans and their export over OTLP/HTTP (JSON), from the event loop.

A ``Span`` is a plain record (ids as lowercase hex, times in Unix nanoseconds, a dict of attributes): what a
trace view needs and nothing else. ``Exporter`` keeps the finished spans as JSON in a bounded list (a request
that finds it full is not recorded, and is counted: ``room``), posts them in batches to the collector with the
app's own aiohttp client every ``traces_export_delay_seconds`` or as soon as a batch is full, one export at a
time, each bounded by a timeout, and posts what is left when the app stops.

Why not the OpenTelemetry SDK: its spans (locks, attribute validation, context objects) and its protobuf
encoding in the batch processor's thread (which takes the interpreter from the event loop) left chat c64 with
0.26-0.46 of its throughput at 100 % sampling; these records, encoded with orjson on the loop, keep ~0.9
(docs/benchmarks.md, benchmarks/traces_overhead.py).

The encoding follows the OTLP/JSON mapping (opentelemetry-proto's ``ExportTraceServiceRequest``): trace and
span ids as hex strings, 64-bit integers (times, ``intValue``) as decimal strings, enums as integers.
"""

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

log = logging.getLogger("gateway.tracing")

INTERNAL, SERVER, CLIENT = 1, 2, 3  # Span.SpanKind
UNSET, ERROR = 0, 2  # Status.StatusCode (the gateway never sets OK: unset is what a success is)
MAX_QUEUE = 8192  # finished spans waiting for export: beyond, no new request is recorded (and it is counted)
MAX_BATCH = 1024  # spans per export
TIMEOUT = 5.0  # seconds an export may take: a collector that is away costs a failed export, never a request
_LOG_EVERY = 60.0  # seconds between two warnings of failed exports
UNIQUE = frozenset({"gateway.request.id", "gen_ai.response.id", "gen_ai.tool.call.id"})  # a value per span


def trace_id() -> str:
    """A new random trace id (128 bits, never all zero; ``random``'s generator is reseeded after a fork)."""
    return "%032x" % (random.getrandbits(128) or 1)


def span_id() -> str:
    return "%016x" % (random.getrandbits(64) or 1)


class Span:
    """One span, open until its JSON joins the export queue (``RequestTrace.end``). ``encoded``, when set, is the
    JSON of ``attributes``, which other spans share (``own`` copies them before a change)."""

    __slots__ = (
        "trace_id",
        "span_id",
        "parent_id",
        "trace_state",
        "name",
        "kind",
        "start",
        "end",
        "attributes",
        "encoded",
        "status",
        "message",
        "events",
        "extra",
    )

    def __init__(
        self,
        trace: tuple[str, str, str],  # trace id, parent span id ("" for a root), trace state
        name: str,
        kind: int,
        attributes: dict[str, Any],
        encoded: str | None = None,
        own_id: str = "",
    ) -> None:
        self.trace_id, self.parent_id, self.trace_state = trace
        self.span_id = own_id or span_id()
        self.name = name
        self.kind = kind
        self.attributes = attributes
        self.encoded = encoded
        self.status = UNSET
        self.message = ""
        self.events: list[str] | None = None
        # the JSON of the attributes whose values differ from one span to the next (ids, token counts, content),
        # kept apart: the rest is most often the same as another span's, and its JSON is found whole (``Encoder``)
        self.extra = ""
        self.start = time.time_ns()
        self.end = 0

    def add_extra(self, pairs: str) -> None:
        """More volatile attributes, as JSON (``string_pair``, ``encode_attributes``)."""
        self.extra = f"{self.extra},{pairs}" if self.extra else pairs

    def own(self) -> dict[str, Any]:
        """The span's attributes, to add to: a shared dict is copied first."""
        if self.encoded is not None:
            self.attributes, self.encoded = dict(self.attributes), None
        return self.attributes

    def fail(self, message: str, kind: str | None = None) -> None:
        """Mark the span failed (``message`` cut at 300 characters), with ``error.type`` when given."""
        self.status, self.message = ERROR, message[:300]
        if kind is not None:
            self.own()["error.type"] = kind

    def record_exception(self, exc: BaseException) -> None:
        """An ``exception`` event (type and message, bounded), as OpenTelemetry's ``record_exception`` adds."""
        attributes = encode_attributes(
            {"exception.type": type(exc).__qualname__[:100], "exception.message": str(exc)[:300]}
        )
        event = f'{{"timeUnixNano":"{time.time_ns()}","name":"exception","attributes":[{attributes}]}}'
        self.events = [*(self.events or ()), event]


def opening(name: str, kind: int, attributes: str) -> str:
    """A span's name, kind and attributes (already JSON), the attributes' array left open for more."""
    return f'"name":{json_string(name)},"kind":{kind},"attributes":[{attributes}'


def tail(name: str, kind: int, attributes: str) -> str:
    """The JSON that ends a span whose name, kind and attributes are the same every time (a policy step's, an
    attempt's that answered): its name, kind and attributes (already JSON) and the span's closing brace."""
    return f"{opening(name, kind, attributes)}]}}"


def head(trace: str, parent: str, state: str) -> str:
    """The JSON that opens a span of ``trace`` (a child of ``parent``, a root when it is "") up to its span id."""
    parent_json = f',"parentSpanId":"{parent}"' if parent else ""
    state_json = f',"traceState":{json_string(state)}' if state else ""
    return f'{{"traceId":"{trace}"{parent_json}{state_json},'


def record(opened: str, span: str, start: int, end: int, rest: str) -> str:
    """A whole span's JSON written at once: its ``head``, its id and times, and the rest (``tail``, or an
    ``opening`` and more attributes and the closing)."""
    return f'{opened}"spanId":"{span}","startTimeUnixNano":"{start}","endTimeUnixNano":"{end}",{rest}'


def _value(value: Any) -> dict[str, Any]:
    kind = type(value)
    if kind is str:
        return {"stringValue": value}
    if kind is bool:
        return {"boolValue": value}
    if kind is int and -(2**63) <= value < 2**63:
        return {"intValue": str(value)}
    if kind is float and math.isfinite(value):
        return {"doubleValue": value}
    if kind is list or kind is tuple:
        return {"arrayValue": {"values": [_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _pair(key: str, value: Any) -> str:
    try:
        return orjson.dumps({"key": key, "value": _value(value)}).decode()
    except orjson.JSONEncodeError:  # a lone surrogate (a tool's output read by json): replaced, not fatal
        return _pair(_clean(key), _clean(str(value)))


def _clean(text: str) -> str:
    return text.encode("utf-8", "replace").decode()


def encode_attributes(attributes: Mapping[str, Any]) -> str:
    """Attributes as the JSON of OTLP ``KeyValue``s, comma-separated (the inside of the array)."""
    return ",".join([_pair(k, v) for k, v in attributes.items()])


def string_pair(key: str, value: str) -> str:
    """The JSON of one string attribute whose key is the gateway's own (plain ASCII)."""
    return f'{{"key":"{key}","value":{{"stringValue":{json_string(value)}}}}}'


def json_string(text: str) -> str:
    try:
        return orjson.dumps(text).decode()
    except orjson.JSONEncodeError:
        return orjson.dumps(_clean(text)).decode()


class Encoder:
    """Spans as an ``ExportTraceServiceRequest`` in OTLP/JSON, written as text: most attribute values and names
    recur from one request to the next (routes, spaces, models, counts), so their JSON is made once and kept (up
    to ``KEEP`` of them); a span is then one f-string."""

    KEEP = 4096

    def __init__(self, resource: Mapping[str, Any]) -> None:
        # a span's attributes (but its volatile ones) as a whole: (their keys, their values) -> their JSON
        self.whole: dict[tuple[tuple[str, ...], tuple[Any, ...]], str] = {}
        self.head = (
            f'{{"resourceSpans":[{{"resource":{{"attributes":[{encode_attributes(resource)}]}},'
            f'"scopeSpans":[{{"scope":{{"name":"gateway"}},"spans":['
        )
        self.known: dict[tuple[str, Any], str] = {}  # (key, value), a list of strings as a tuple
        self.names: dict[str, str] = {}

    def attributes(self, attributes: dict[str, Any]) -> str:
        """The JSON of ``attributes``: found whole when the same keys had the same values before, else made of
        the items' JSON (a number shares the encoding of an equal one of the same key: 7.0 after 7 is written 7;
        the gateway's floats are never integers' keys)."""
        try:
            key = (tuple(attributes), tuple(attributes.values()))
            found = self.whole.get(key)
        except TypeError:  # a list among the values
            return self.items(attributes)
        if found is None:
            if len(self.whole) >= self.KEEP:
                self.whole.clear()
            found = self.whole[key] = self.items(attributes)
        return found

    def items(self, attributes: dict[str, Any]) -> str:
        """The JSON of ``attributes``, item by item, those seen before looked up at once."""
        items = list(attributes.items())
        try:
            pairs = list(map(self.known.get, items))
        except TypeError:  # a list among the values: one by one
            pairs = [None] * len(items)
        if None in pairs:  # the items not seen before (a request id, at least): found in C, made one by one
            at = pairs.index(None)
            while True:
                pairs[at] = self._slow(items[at])
                try:
                    at = pairs.index(None, at + 1)
                except ValueError:
                    break
        return ",".join(pairs)  # type: ignore[arg-type]

    def _slow(self, item: tuple[str, Any]) -> str:
        kind = type(item[1])
        if item[0] in UNIQUE:  # never seen again: not kept (it would push out what recurs)
            return _pair(*item)
        if kind is str or kind is int:  # kept (True is a bool: neither, nor a float)
            key: tuple[str, Any] = item
        elif (kind is tuple or kind is list) and all(type(v) is str for v in item[1]):  # finish reasons
            key = (item[0], tuple(item[1]))
        else:
            return _pair(*item)
        known = self.known
        pair = known.get(key)
        if pair is None:
            if len(known) >= self.KEEP:
                known.clear()
            pair = known[key] = _pair(*item)
        return pair

    def name(self, name: str) -> str:
        found = self.names.get(name)
        if found is None:
            if len(self.names) >= self.KEEP:
                self.names.clear()
            found = self.names[name] = json_string(name)
        return found

    def span(self, s: Span) -> str:
        extra = f',"parentSpanId":"{s.parent_id}"' if s.parent_id else ""
        if s.status:
            extra += f',"status":{{"code":{s.status},"message":{json_string(s.message)}}}'
        if s.trace_state:
            extra += f',"traceState":{json_string(s.trace_state)}'
        if s.events:
            extra += f',"events":[{",".join(s.events)}]'
        attributes = s.encoded if s.encoded is not None else self.attributes(s.attributes)
        if s.extra:
            attributes = f"{attributes},{s.extra}" if attributes else s.extra
        return (
            f'{{"traceId":"{s.trace_id}","spanId":"{s.span_id}"{extra},"name":{self.name(s.name)},"kind":{s.kind},'
            f'"startTimeUnixNano":"{s.start}","endTimeUnixNano":"{s.end}","attributes":[{attributes}]}}'
        )

    def request(self, encoded: list[str]) -> bytes:
        """An export of spans as JSON (joined once, here: the text is copied as few times as it can be)."""
        return f"{self.head}{','.join(encoded)}]}}]}}]}}".encode()


class Exporter:
    """Finished spans, batched and posted to the collector from the event loop (``start`` / ``stop``)."""

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        resource: Mapping[str, Any],
        delay: float,
        max_queue: int = MAX_QUEUE,
    ) -> None:
        self.endpoint = endpoint
        self.headers = {**headers, "Content-Type": "application/json"}
        self.encoder = Encoder(resource)
        self.delay = delay
        self.max_queue = max_queue
        # ended spans as JSON text (``Encoder.span``, ``record``), oldest first: a recorded request's spans are
        # appended here as they end (``RequestTrace.finished`` is this list), so it is only ever changed in place
        self.encoded: list[str] = []
        self.unrecorded = 0  # requests left unrecorded because the queue was full (``room``)
        self.failed = 0  # spans of exports that failed
        self.exported = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._warned = -_LOG_EVERY
        self._closing = False

    @property
    def queued(self) -> int:
        """Spans waiting for export."""
        return len(self.encoded)

    def room(self) -> bool:
        """Whether a new request may be recorded: its spans go straight into the queue as they end, so the bound
        is kept per request (a request started under it records all its spans); with a full batch waiting, the
        export starts. Spans are queued as JSON text: span objects die young, and the cyclic collector never
        walks a queue of them (measured: that queue made generation-0 collections more frequent and slower)."""
        queued = len(self.encoded)
        if queued >= MAX_BATCH:
            self._wake.set()
            if queued >= self.max_queue:
                self.unrecorded += 1
                return False
        return True

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        connector = aiohttp.TCPConnector(limit=2, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent",)
        )
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            if not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.delay):
                        await self._wake.wait()
                self._wake.clear()
            while self.encoded:  # a full batch left: at once; at the stop, everything
                await self.flush_batch()
                if len(self.encoded) < MAX_BATCH and not self._closing:
                    break
            if self._closing:
                return

    async def flush_batch(self) -> None:
        """Post the oldest batch of finished spans (up to ``MAX_BATCH``)."""
        batch = self.encoded[:MAX_BATCH]
        del self.encoded[: len(batch)]
        spans = len(batch)
        if not batch or self._session is None:
            self.failed += spans
            return
        try:
            body = self.encoder.request(batch)
            async with self._session.post(self.endpoint, data=body, headers=self.headers) as answer:
                await answer.read()
                if answer.status >= 300:
                    raise aiohttp.ClientResponseError(answer.request_info, (), status=answer.status)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            self.failed += spans
            self._warn(exc)
            return
        self.exported += spans

    def lost(self, exc: Exception) -> None:
        """A span that could not be encoded: lost, counted, warned of (never the request's failure)."""
        self.failed += 1
        self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned >= _LOG_EVERY:  # one line a minute at most for a collector that is away
            self._warned = now
            detail = f"status {exc.status}" if isinstance(exc, aiohttp.ClientResponseError) else type(exc).__name__
            log.warning("traces: an export to the collector failed (%s); %d spans lost so far", detail, self.failed)

    async def stop(self) -> None:
        """Stop the batches, post what is left (each export bounded by the timeout), close the client."""
        task, self._task = self._task, None
        self._closing = True
        self._wake.set()
        if task is not None:  # the loop posts what is left, then ends (all in the timeout, else it is cut)
            try:
                async with asyncio.timeout(TIMEOUT):
                    await task
            except TimeoutError:
                self.failed += len(self.encoded)
                self.encoded.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.unrecorded or self.failed:
            log.warning(
                "traces: %d requests left unrecorded (queue full), %d spans lost in failed exports",
                self.unrecorded,
                self.failed,
            )
