"""A third-party policy package used by the tests: loaded by ``module:Class`` like any outside plugin."""

from gateway import PermissionDenied, Policy, PolicyParams, Reply, RequestContext


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
