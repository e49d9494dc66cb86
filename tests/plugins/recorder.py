"""A third-party policy package used by the tests: loaded by ``module:Class`` like any outside plugin."""

from collections.abc import Sequence
from typing import Any

from gateway import Halt, PermissionDenied, Policy, PolicyParams, RateLimited, Reply, RequestContext, Script, StoreStep


class Recorder(Policy):
    """Appends what it saw to a log in the store: ``before`` and ``after:<outcome>:<output tokens>``."""

    name = "recorder"

    class Params(PolicyParams):
        log: str

    async def before(self, ctx: RequestContext) -> Reply | None:
        await ctx.store.append(self.params.log, b"before")
        return None

    async def after(self, ctx: RequestContext) -> None:
        tokens = ctx.usage.output_tokens if ctx.usage else None
        entry = f"after:{ctx.outcome}:{tokens}:{','.join(ctx.governance_applied)}"
        await ctx.store.append(self.params.log, entry.encode())


class DenyWord(Policy):
    """Rejects a request whose last message contains ``word``."""

    name = "deny_word"

    class Params(PolicyParams):
        word: str

    async def before(self, ctx: RequestContext) -> Reply | None:
        if self.params.word in str(ctx.body.get("messages", [])[-1]):
            raise PermissionDenied("denied by deny_word", code="denied")
        return None


class Canned(Policy):
    """Answers without calling the upstream (the short-circuit path idempotent replays use)."""

    name = "canned"

    async def before(self, ctx: RequestContext) -> Reply | None:
        if ctx.header("x-canned"):
            return Reply(200, b'{"canned": true}', [(b"content-type", b"application/json")])
        return None


# take one request from the caller's daily quota (created at ARGV[1]); 0 when it is used up, which halts the
# chain's store round trip
TAKE_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', 86400) then end
local left = redis.call('DECR', KEYS[1])
if left < 0 then return 0 end
return 1
"""


def take_in_memory(data: Any, keys: Sequence[str], args: Sequence[Any]) -> int:
    current = data.get(keys[0])
    left = int(current if current is not None else args[0]) - 1
    data.put(keys[0], str(left).encode(), 86400)
    return int(left >= 0)


class DailyQuota(Policy):
    """A store-backed policy written the batched way: its store work is a StoreStep (docs/policies.md)."""

    name = "daily_quota"

    class Params(PolicyParams):
        requests: int

    def __init__(self, params: PolicyParams) -> None:
        super().__init__(params)
        self._scripts: dict[int, Script] = {}

    async def before(self, ctx: RequestContext) -> StoreStep:
        script = self._scripts.get(id(ctx.store))
        if script is None:
            script = self._scripts[id(ctx.store)] = ctx.store.script(TAKE_LUA, take_in_memory, Halt("r == 0", _spent))
        return StoreStep(script, [f"quota:{ctx.principal.key.name}"], [self.params.requests], then=self.taken)

    async def taken(self, ctx: RequestContext, result: Any) -> None:
        if not int(result):
            raise RateLimited("Daily quota used up.", code="quota_exceeded")


def _spent(result: Any) -> bool:
    return not int(result)
