"""The runtime catalogue: indexes over the YAML catalogue plus each space's allowed models in the store.

The YAML seeds a space's allowed models the first time the store sees that space; from then on the store
is the truth, changed through the native allowed-models API, so every replica sees a change at once.

A store can lose what it holds (a Redis restarted without persistence, a failover to an empty replica, a
flush): a seed marker per space tells a space the store knows from one it lost. Every reader of a space's
allowed models runs the seed first, in the same script (the allow-list check stays one round trip), so a lost
space is seeded again from the YAML by the first request, probe or admin call that meets it, atomically:
exactly one replica seeds it.
"""

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from config.catalog import ApiKey, Catalogue, Space, Tenant, TenantModel
from gateway.errors import AuthenticationFailed, NotFound, PermissionDenied
from gateway.store import Halt, MemoryData, Script, Store

AllowedCall = tuple[Script, list[str], list[str]]  # a store script call: the script, its keys and args
_REFUSED = Halt("r == 0", lambda r: not r)  # a model not allowed halts the chain's batch
_SEED_BATCH = 64  # spaces seeded per round trip (a composed script holds at most ~190 functions)
_LUA_SAFE = re.compile(r"[0-9A-Za-z:.\-]*")


def _lua_string(value: str) -> str:
    if not _LUA_SAFE.fullmatch(value):  # ids are UUIDs and stamps ours: nothing here needs escaping
        raise ValueError(f"not embeddable in a script: {value!r}")
    return f"'{value}'"


def _seed_lua(seed: Sequence[tuple[str, str]]) -> str:
    """Lua giving a space (KEYS[1] its models hash, KEYS[2] its seed marker) the YAML's models, each with its
    stamp, when the marker is missing; ``seeded`` is 1 then. The models are part of the script (one per
    space), so the hot path sends none of them. HSETNX keeps a model an admin added to a lost space."""
    pairs = ", ".join(_lua_string(v) for pair in seed for v in pair)
    return (
        "local seeded = 0\n"
        "if redis.call('EXISTS', KEYS[2]) == 0 then\n"
        f"  local seed = {{{pairs}}}\n"
        "  for i = 1, #seed, 2 do redis.call('HSETNX', KEYS[1], seed[i], seed[i + 1]) end\n"
        "  redis.call('SET', KEYS[2], '1')\n"
        "  seeded = 1\n"
        "end\n"
    )


def _seed_in_memory(data: MemoryData, keys: Sequence[str], seed: Sequence[tuple[str, str]]) -> int:
    if data.alive(keys[1]):
        return 0
    models = data.get(keys[0])
    if models is None:
        models = {}
        data.put(keys[0], models)
    for model_id, stamp in seed:
        models.setdefault(model_id, stamp.encode())
    data.put(keys[1], b"1")
    return 1


def space_scripts(store: Store, seed: Sequence[tuple[str, str]]) -> tuple[Script, Script]:
    """A space's two scripts on ``store``, both with the space's models hash and seed marker as keys: the seed
    (1 when it seeded) and the allow-list check (ARGV[1] a model id: 1 when allowed, else 0, which halts)."""
    seed_lua = _seed_lua(seed)

    def seed_fallback(data: MemoryData, keys: Sequence[str], args: Sequence[Any]) -> int:
        return _seed_in_memory(data, keys, seed)

    def check_fallback(data: MemoryData, keys: Sequence[str], args: Sequence[Any]) -> int:
        _seed_in_memory(data, keys, seed)
        return int(args[0] in (data.get(keys[0]) or ()))

    check_lua = seed_lua + "return redis.call('HEXISTS', KEYS[1], ARGV[1])"
    return store.script(seed_lua + "return seeded", seed_fallback), store.script(check_lua, check_fallback, _REFUSED)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an API key of a tenant."""

    tenant: Tenant
    key: ApiKey
    spaces: frozenset[str] | None  # None: every space of the tenant
    tenant_id: str = ""  # str(tenant.id), formatted once

    def __post_init__(self) -> None:
        object.__setattr__(self, "tenant_id", str(self.tenant.id))

    @property
    def id(self) -> str:
        return self.key.principal

    @property
    def is_admin(self) -> bool:
        return self.key.role == "admin"

    def may_use(self, space_id: str) -> bool:
        return self.spaces is None or space_id in self.spaces


@dataclass(frozen=True, slots=True)
class AllowedModel:
    model: TenantModel
    added_at: str  # ISO-8601 UTC


@dataclass(slots=True)
class _TenantIndex:
    tenant: Tenant
    by_alias: dict[str, TenantModel] = field(default_factory=dict)
    by_id: dict[str, TenantModel] = field(default_factory=dict)


def hash_key(key: str) -> str:
    """The sha256 hex digest under which an API key is stored in the catalogue."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_ref(key: ApiKey) -> str:
    """What names an API key in stored work (never the key, nor the catalogue's hash of it as such)."""
    return hashlib.sha256(b"key-ref:" + key.sha256.encode()).hexdigest()


def now_iso(offset_us: int = 0, now: datetime | None = None) -> str:
    """ISO-8601 UTC with microseconds (so models added in one second keep their order)."""
    stamp = (now or datetime.now(UTC)) + timedelta(microseconds=offset_us)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Catalog:
    """Lookups for auth and routing, and the store-backed allowed-models overlay."""

    def __init__(self, catalogue: Catalogue, store: Store) -> None:
        self.store = store
        self.tenants = catalogue.tenants
        self._keys: dict[str, Principal] = {}
        self._refs: dict[str, Principal] = {}  # key_ref -> principal: work started by a key, resumed later
        self._tenants: dict[str, _TenantIndex] = {}
        self._spaces: dict[str, tuple[Tenant, Space]] = {}
        self.space_ids: dict[int, str] = {}  # id() of a catalogue space -> its id as a string, formatted once
        self._allowed_calls: dict[tuple[str, str], AllowedCall] = {}  # bounded by the catalogue
        for tenant in catalogue.tenants:
            index = _TenantIndex(tenant)
            for m in tenant.models:
                index.by_alias[m.alias] = index.by_id[str(m.id)] = m
            self._tenants[str(tenant.id)] = index
            for s in tenant.spaces:
                self._spaces[str(s.id)] = (tenant, s)
                self.space_ids[id(s)] = str(s.id)
            for k in tenant.api_keys:
                spaces = None if "*" in k.spaces else frozenset(k.spaces)
                self._keys[k.sha256] = Principal(tenant, k, spaces)
                self._refs[key_ref(k)] = self._keys[k.sha256]
        # per space: its YAML models (decisions while the store is down) and its scripts with them as the seed
        self._yaml: dict[str, dict[str, str]] = {}  # space id -> model id -> alias, in YAML order
        self._scripts: dict[str, tuple[Script, Script]] = {}
        loaded = datetime.now(UTC)  # the seed's stamps: YAML order, a microsecond apart
        for space_id, (tenant, space) in self._spaces.items():
            models = [m for m in (self.tenant_model(tenant, ref) for ref in space.models) if m is not None]
            self._yaml[space_id] = {str(m.id): m.alias for m in models}
            seed = [(str(m.id), now_iso(position, loaded)) for position, m in enumerate(models)]
            self._scripts[space_id] = space_scripts(store, seed)

    # --- auth -------------------------------------------------------------------------------------------
    def authenticate(self, key: str | None) -> Principal:
        """The principal of an API key; AuthenticationFailed when missing or unknown."""
        if not key:
            raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'.")
        principal = self._keys.get(hash_key(key))
        if principal is None:
            raise AuthenticationFailed("Invalid API key.")
        return principal

    def principal_by_ref(self, ref: str) -> Principal:
        """The principal of the key ``key_ref`` names (work it started, run later: a skill execution);
        AuthenticationFailed when the catalogue no longer has that key."""
        principal = self._refs.get(ref)
        if principal is None:
            raise AuthenticationFailed("The API key that started this work is no longer valid.")
        return principal

    def space_for(self, principal: Principal, space_id: str | None) -> Space:
        """The space a request acts in: the one named, else the key's default.

        A space of another tenant answers NotFound as if it did not exist; one the key may not use,
        PermissionDenied.
        """
        if space_id is None:
            if principal.key.default_space is None:
                raise PermissionDenied("This key has no default space: name one with OpenAI-Project or X-Space-Id.")
            space_id = str(principal.key.default_space)
        found = self._spaces.get(space_id)
        if found is None or found[0].id != principal.tenant.id:
            raise NotFound(f"Space '{space_id}' not found.", code="space_not_found")
        if not principal.may_use(space_id):
            raise PermissionDenied(f"This key has no access to space '{space_id}'.", code="space_forbidden")
        return found[1]

    # --- models -----------------------------------------------------------------------------------------
    def tenant_model(self, tenant: Tenant, ref: str) -> TenantModel | None:
        """A tenant model by alias or id."""
        index = self._tenants[str(tenant.id)]
        return index.by_alias.get(ref) or index.by_id.get(ref)

    async def seed(self) -> int:
        """Give each space the YAML's allowed models unless the store knows it (it never saw the space, or lost
        it); atomic per space, so exactly one replica seeds it. Returns how many spaces were seeded."""
        calls = [(scripts[0], _space_keys(space_id), ()) for space_id, scripts in self._scripts.items()]
        seeded = 0
        for start in range(0, len(calls), _SEED_BATCH):
            seeded += sum(int(r) for r in await self.store.batch(calls[start : start + _SEED_BATCH]))
        return seeded

    async def _seed_space(self, space: Space) -> None:
        space_id = str(space.id)
        await self._scripts[space_id][0](_space_keys(space_id), ())

    def allowed_call(self, space_id: str, model: TenantModel) -> AllowedCall:
        """The script call that answers 1 when ``model`` is allowed in the space right now, else 0 (seeding the
        space first if the store lost it); cached, as it is the same few strings for every request."""
        call = self._allowed_calls.get((space_id, model.alias))
        if call is None:
            call = (self._scripts[space_id][1], _space_keys(space_id), [str(model.id)])
            self._allowed_calls[(space_id, model.alias)] = call
        return call

    def in_catalogue(self, space_id: str, model: TenantModel) -> bool:
        """Whether the YAML allows ``model`` in the space (the decision while the store cannot be reached)."""
        return str(model.id) in self._yaml[space_id]

    def catalogue_aliases(self, space_id: str) -> list[str]:
        """The aliases the YAML allows in the space, in its order."""
        return list(self._yaml[space_id].values())

    async def allowed_models(self, tenant: Tenant, space: Space) -> list[AllowedModel]:
        """The space's allowed models, in the order they were added."""
        await self._seed_space(space)
        raw = await self.store.hgetall(_models_key(space.id))
        out = []
        for model_id, added in raw.items():
            model = self._tenants[str(tenant.id)].by_id.get(model_id)
            if model is not None:  # a model since removed from the catalogue is skipped
                out.append(AllowedModel(model, added.decode()))
        out.sort(key=lambda a: (a.added_at, str(a.model.id)))
        return out

    async def allow(self, space: Space, model: TenantModel) -> AllowedModel | None:
        """Add a model to the space; None when it was already there."""
        await self._seed_space(space)  # a space the store lost gets its YAML models back first, then the change
        stamp = now_iso()
        added = await self.store.hsetnx(_models_key(space.id), str(model.id), stamp.encode())
        return AllowedModel(model, stamp) if added else None

    async def disallow(self, space: Space, model_id: UUID) -> bool:
        """Remove a model from the space; False when it was not there."""
        await self._seed_space(space)  # likewise: or the next seed would bring the model back
        return await self.store.hdel(_models_key(space.id), str(model_id))


def _models_key(space_id: UUID | str) -> str:
    return f"space:{space_id}:models"


def _seeded_key(space_id: UUID | str) -> str:
    return f"space:{space_id}:seeded"


def _space_keys(space_id: str) -> list[str]:
    """The keys of a space's scripts: its models hash, then its seed marker."""
    return [_models_key(space_id), _seeded_key(space_id)]
