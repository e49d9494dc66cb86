"""The runtime catalogue: indexes over the YAML catalogue plus each space's allowed models in the store.

The YAML seeds a space's allowed models the first time the store sees that space; from then on the store
is the truth, changed through the native allowed-models API, so every replica sees a change at once.
"""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from config.catalog import ApiKey, Catalogue, Space, Tenant, TenantModel
from gateway.errors import AuthenticationFailed, NotFound, PermissionDenied
from gateway.store import Halt, Store

# is a model allowed in a space: KEYS[1] the space's models hash, ARGV[1] the model id; a 0 halts a batch
_ALLOWED_LUA = "return redis.call('HEXISTS', KEYS[1], ARGV[1])"


def _allowed_in_memory(data: Any, keys: Sequence[str], args: Sequence[Any]) -> int:
    return int(args[0] in (data.get(keys[0]) or ()))


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


def now_iso(offset_us: int = 0) -> str:
    """ISO-8601 UTC with microseconds (so models added in one second keep their order)."""
    stamp = datetime.now(UTC) + timedelta(microseconds=offset_us)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Catalog:
    """Lookups for auth and routing, and the store-backed allowed-models overlay."""

    def __init__(self, catalogue: Catalogue, store: Store) -> None:
        self.store = store
        self.allowed_check = store.script(_ALLOWED_LUA, _allowed_in_memory, Halt("r == 0", lambda r: not r))
        self.tenants = catalogue.tenants
        self._keys: dict[str, Principal] = {}
        self._tenants: dict[str, _TenantIndex] = {}
        self._spaces: dict[str, tuple[Tenant, Space]] = {}
        self.space_ids: dict[int, str] = {}  # id() of a catalogue space -> its id as a string, formatted once
        self._allowed_calls: dict[tuple[str, str], tuple[list[str], list[str]]] = {}  # bounded by the catalogue
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

    # --- auth -------------------------------------------------------------------------------------------
    def authenticate(self, key: str | None) -> Principal:
        """The principal of an API key; AuthenticationFailed when missing or unknown."""
        if not key:
            raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'.")
        principal = self._keys.get(hash_key(key))
        if principal is None:
            raise AuthenticationFailed("Invalid API key.")
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

    async def seed(self) -> None:
        """Give each space its YAML allowed models, unless the store already knows the space."""
        for tenant, space in self._spaces.values():
            if await self.store.set_nx(_seeded_key(space.id), b"1"):
                for position, ref in enumerate(space.models):
                    model = self.tenant_model(tenant, ref)
                    if model is not None:
                        stamp = now_iso(position).encode()
                        await self.store.hsetnx(_models_key(space.id), str(model.id), stamp)

    def allowed_call(self, space_id: str, model: TenantModel) -> tuple[list[str], list[str]]:
        """The keys and args of ``allowed_check`` (1 when ``model`` is allowed in the space right now, else 0);
        cached, as they are the same few strings for every request."""
        call = self._allowed_calls.get((space_id, model.alias))
        if call is None:
            call = self._allowed_calls[(space_id, model.alias)] = ([_models_key(space_id)], [str(model.id)])
        return call

    async def allowed_models(self, tenant: Tenant, space: Space) -> list[AllowedModel]:
        """The space's allowed models, in the order they were added."""
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
        stamp = now_iso()
        added = await self.store.hsetnx(_models_key(space.id), str(model.id), stamp.encode())
        return AllowedModel(model, stamp) if added else None

    async def disallow(self, space: Space, model_id: UUID) -> bool:
        """Remove a model from the space; False when it was not there."""
        return await self.store.hdel(_models_key(space.id), str(model_id))


def _models_key(space_id: UUID | str) -> str:
    return f"space:{space_id}:models"


def _seeded_key(space_id: UUID) -> str:
    return f"space:{space_id}:seeded"
