"""Streams in progress in this process: their SSE frames so far, for the client that started them and for
any client that resumes (``GET …?stream=true&starting_after=N``, or ``Last-Event-ID``).

Frames reach the store's event log in batches (every ``FLUSH_EVERY`` frames, else at most ``FLUSH_SECONDS``
after they were published, also while the stream pauses, and at the end), so another replica can resume or
follow too, at most that far behind; the process that runs a stream serves its own followers from memory
with no store round trip per event.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from gateway.errors import GatewayError
from gateway.responses.records import ResponseRecords

log = logging.getLogger("gateway.responses.live")

FLUSH_EVERY = 32
FLUSH_SECONDS = 0.25


class LiveStream:
    """The frames of one response's event stream; frame i has sequence_number i."""

    def __init__(self, response_id: str, records: ResponseRecords, persist: bool) -> None:
        self.response_id = response_id
        self.records = records
        self.persist = persist
        self.frames: list[bytes] = []
        self.done = False
        self._flushed = 0
        self._flushed_at = time.monotonic()
        self._changed = asyncio.Event()
        self._flushing = asyncio.Lock()  # appends reach the log in order
        self._timer: asyncio.TimerHandle | None = None  # the flush due FLUSH_SECONDS after unflushed frames
        self._due: asyncio.Future[None] | None = None
        self.latest: dict[str, object] | None = None  # the response object as of the last lifecycle event
        self.followers = 0  # clients reading it through ``follow`` right now

    async def publish(self, frames: list[bytes]) -> None:
        self.frames.extend(frames)
        self._wake()
        if not self.persist:
            return
        if len(self.frames) - self._flushed >= FLUSH_EVERY or time.monotonic() - self._flushed_at > FLUSH_SECONDS:
            await self.flush()
        elif self._timer is None:  # a stream that pauses now still reaches the store within FLUSH_SECONDS
            self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._flush_due)

    async def close(self) -> None:
        """The last frame was published: persist what is left (after a due flush under way) and release
        followers."""
        self.done = True
        self._wake()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.persist:
            await self.flush()

    async def flush(self) -> None:
        async with self._flushing:
            upto = len(self.frames)
            if upto > self._flushed:
                batch = self.frames[self._flushed : upto]
                self._flushed, self._flushed_at = upto, time.monotonic()
                await self.records.append_events(self.response_id, batch)

    def _flush_due(self) -> None:
        self._timer = None
        if not self.done:  # (close flushes itself) the task is held until it ends, and close waits for its flush
            self._due = asyncio.ensure_future(self._flush_quietly())

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except GatewayError as exc:  # as for any flush: those frames are missing from the store's log
            log.warning("events of response %s not stored: %s", self.response_id, exc.message)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, after: int = -1) -> AsyncIterator[bytes]:
        """Frames with sequence_number > ``after``, then new ones as they come, until the stream ends."""
        position = after + 1
        self.followers += 1
        try:
            while True:
                while position < len(self.frames):
                    yield self.frames[position]
                    position += 1
                if self.done:
                    return
                await self._changed.wait()
        finally:
            self.followers -= 1


class LiveStreams:
    """The registry of one app's streams in progress."""

    def __init__(self) -> None:
        self.streams: dict[str, LiveStream] = {}

    def open(self, response_id: str, records: ResponseRecords, persist: bool) -> LiveStream:
        stream = self.streams[response_id] = LiveStream(response_id, records, persist)
        return stream

    def get(self, response_id: str) -> LiveStream | None:
        return self.streams.get(response_id)

    def forget(self, response_id: str) -> None:
        self.streams.pop(response_id, None)
