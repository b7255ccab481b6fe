# cython: annotation_typing=False
# Cython compiles this file in place; it is also the pure-Python twin (see gwcore/_twins.py).
# Annotations only document here: they never become C-level type checks.
"""API keys: who may call ``/v1/*``, and which key a request's usage belongs to.

It owns the master key (``GWCORE_MASTER_KEY``, compared in constant time), managed keys (made and
revoked through the admin API, stored in the ledger's database as SHA-256 hashes, each with an
optional model allow-list and expiry), the per-worker cache of key lookups, and the 401 answer in
the OpenAI error shape. It never stores, logs or echoes a key.

Cost per request: the master key is one constant-time compare; a managed key is one SHA-256 and
one dict lookup. The database is asked at most once per key per ``key_cache_ttl`` seconds per
worker (one lookup in flight per key), so a revoke reaches the worker that served it at once and
every other worker within ``key_cache_ttl`` (default 5 s). Expiry is checked on every request.
If the database cannot answer, a key seen before keeps its last known state; an unknown one gets
503 (never a silent pass).

With no master key, ``/v1`` is open (and startup says so loudly); managed keys are only enforced
alongside a master key, which is also what the admin API needs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

import orjson

from gwcore.config import ConfigError
from gwcore.errors import GatewayError
from gwcore.ledger.store import ApiKey, LedgerStore

__all__ = ["MASTER_KEY_ID", "KeyAuth", "hash_key"]

log = logging.getLogger("gwcore.auth")

MASTER_KEY_ID = "master"  # the key id on the usage records of master-key requests
KEY_PREFIX = "gwk_"
_MISS = object()
_MAX_CACHED = 10_000


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _unauthorized(message: str, code: str = "invalid_api_key") -> GatewayError:
    return GatewayError(401, message, type="authentication_error", code=code)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """``Authorization: Bearer <key>``, else ``x-api-key: <key>`` (Anthropic's header)."""
    value = headers.get("authorization")
    if value:
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    value = headers.get("x-api-key")
    if value and value.strip():
        return value.strip()
    return None


class KeyAuth:
    """Authentication of one worker: the master key, the managed-key cache, the guards."""

    def __init__(
        self,
        master_key: str | None,
        store: LedgerStore | None = None,
        *,
        key_cache_ttl: float = 5.0,
        metrics: Any = None,
        registry: Any = None,
    ) -> None:
        self._master = master_key.encode("utf-8") if master_key else None
        self.store = store
        self.key_cache_ttl = key_cache_ttl
        self.metrics = metrics
        self.registry = registry  # resolves model names for the allow-lists
        self._cache: dict[str, tuple[ApiKey | None, float]] = {}
        self._lookups: dict[str, asyncio.Future[ApiKey | None]] = {}

    @property
    def required(self) -> bool:
        return self._master is not None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str],
        section: Any = None,
        **kwargs: Any,
    ) -> KeyAuth:
        """``GWCORE_MASTER_KEY`` plus the YAML ``auth:`` section (``key_cache_ttl`` seconds)."""
        ttl = 5.0
        if section is not None:
            if not isinstance(section, Mapping):
                raise ConfigError("must be a mapping", "auth")
            for key, value in section.items():
                if key != "key_cache_ttl":
                    raise ConfigError("unknown setting (known: key_cache_ttl)", f"auth.{key}")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise ConfigError("must be a number of seconds >= 0", "auth.key_cache_ttl")
                ttl = float(value)
        master = (environ.get("GWCORE_MASTER_KEY") or "").strip() or None
        return cls(master, key_cache_ttl=ttl, **kwargs)

    async def startup(self) -> None:
        if self._master is not None:
            log.info("authentication: master key set; managed keys %s", _managed(self.store))
            return
        log.warning(
            "AUTHENTICATION IS OFF: GWCORE_MASTER_KEY is not set, so anyone who can reach this "
            "port can use every configured provider on your account, and the admin API is "
            "disabled. Set GWCORE_MASTER_KEY to require keys."
        )
        if self.store is not None:
            try:
                keys = await asyncio.wait_for(self.store.keys(), 2.0)
            except Exception:
                return
            active = sum(1 for k in keys if k.status() == "active")
            if active:
                log.warning(
                    "%d managed API key(s) exist but are NOT enforced without GWCORE_MASTER_KEY",
                    active,
                )

    # ---- checks

    def is_master(self, token: str) -> bool:
        master = self._master
        return master is not None and hmac.compare_digest(token.encode("utf-8"), master)

    def _fail(self, reason: str, err: GatewayError) -> GatewayError:
        if self.metrics is not None:
            self.metrics.auth_failed(reason)
        return err

    async def authenticate(self, headers: Mapping[str, str]) -> ApiKey | None:
        """The managed key presented (None: the master key); raises the 401 (or 503)."""
        key = self.authenticate_cached(headers)
        if key is _MISS:
            key = self._admitted(await self._lookup(hash_key(presented_key(headers))))
        return key

    def authenticate_cached(self, headers: Mapping[str, str]) -> Any:
        """``authenticate`` without awaiting: the same answer, or ``_MISS`` when the key is not in
        the cache (then await ``authenticate``)."""
        token = presented_key(headers)
        if token is None:
            raise self._fail(
                "missing",
                _unauthorized(
                    "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' "
                    "(or in an 'x-api-key' header).",
                    "missing_api_key",
                ),
            )
        if self.is_master(token):
            return None
        key = self._cached(hash_key(token))
        return key if key is _MISS else self._admitted(key)

    def _admitted(self, key: ApiKey | None) -> ApiKey:
        if key is None:
            raise self._fail("invalid", _unauthorized("Incorrect API key provided."))
        if key.revoked_at is not None:
            raise self._fail("revoked", _unauthorized("This API key has been revoked."))
        if key.expires_at is not None and time.time() >= key.expires_at:
            raise self._fail("expired", _unauthorized("This API key has expired."))
        return key

    def require_master(self, headers: Mapping[str, str]) -> None:
        """The admin API's check: the master key and nothing else."""
        if self._master is None:
            raise GatewayError(
                403,
                "The admin API is disabled: set GWCORE_MASTER_KEY to use it.",
                type="permission_error",
                code="admin_disabled",
            )
        token = presented_key(headers)
        if token is None:
            raise self._fail(
                "missing",
                _unauthorized(
                    "The admin API needs the master key as a Bearer token.", "missing_api_key"
                ),
            )
        if not self.is_master(token):
            raise self._fail("invalid", _unauthorized("Incorrect master key provided."))

    def check_model(self, key: ApiKey, body: bytes) -> None:
        """A key with an allow-list may only name the models on it (``model``, ``provider/model``
        or a glob such as ``provider/*``; a bare name matches it on any provider)."""
        patterns = key.models
        if patterns is None:
            return
        try:
            model = orjson.loads(body).get("model")
        except (orjson.JSONDecodeError, AttributeError):
            return  # the handler answers 400 for that, before anything goes upstream
        if not isinstance(model, str) or not model:
            return
        if self.registry is not None:
            allowed = self.registry.allowed(patterns, model)  # an unknown model: 404 follows
        else:
            allowed = any(fnmatchcase(model, p) for p in patterns)
        if not allowed:
            raise self._fail(
                "model",
                GatewayError(
                    403,
                    f"This API key may not use the model `{model}`.",
                    type="permission_error",
                    code="model_not_allowed",
                    param="model",
                ),
            )

    # ---- the cache of managed keys

    def _cached(self, digest: str) -> Any:
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        return _MISS

    async def _lookup(self, digest: str) -> ApiKey | None:
        pending = self._lookups.get(digest)
        if pending is None:
            pending = asyncio.get_running_loop().create_task(self._fetch(digest))
            self._lookups[digest] = pending
            pending.add_done_callback(lambda _: self._lookups.pop(digest, None))
        return await asyncio.shield(pending)

    async def _fetch(self, digest: str) -> ApiKey | None:
        if self.store is None:
            return None
        try:
            key = await self.store.key_by_hash(digest)
        except Exception as exc:
            stale = self._cache.get(digest)
            if stale is not None:
                log.warning("key lookup failed (%s); using the key's last known state", exc)
                return stale[0]
            log.error("key lookup failed: %s", exc)
            raise GatewayError(
                503,
                "The API key cannot be verified right now; try again shortly.",
                type="server_error",
                code="auth_unavailable",
            ) from None
        cache = self._cache
        if len(cache) >= _MAX_CACHED:
            cache.clear()
        cache[digest] = (key, time.monotonic() + self.key_cache_ttl)
        return key

    def forget(self, key_hash: str) -> None:
        self._cache.pop(key_hash, None)

    # ---- managed keys (the admin API's operations)

    async def create_key(
        self,
        name: str | None = None,
        models: list[str] | None = None,
        expires_at: float | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret (shown once: only its hash is stored)."""
        store = self._need_store()
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id="key_" + secrets.token_hex(8),
            key_hash=hash_key(secret),
            prefix=secret[:12],
            name=name,
            models=models,
            expires_at=expires_at,
        )
        await store.insert_key(key)
        self.forget(key.key_hash)
        return key, secret

    async def revoke_key(self, key_id: str) -> ApiKey | None:
        key = await self._need_store().revoke_key(key_id, time.time())
        if key is not None:
            self.forget(key.key_hash)
        return key

    def _need_store(self) -> LedgerStore:
        if self.store is None:
            raise GatewayError(
                503,
                "Managed keys need the usage ledger's database (GWCORE_LEDGER is off).",
                type="server_error",
                code="ledger_off",
            )
        return self.store

    # ---- handler wrappers

    def guard(self, handler: Any, *, check_model: bool = False, metrics: Any = None) -> Any:
        """``handler`` behind the key check; ``request.key_id`` is set for the usage record.
        With ``metrics``, the request counts as in flight until its usage record is written."""
        if not self.required and metrics is None:
            return handler

        def admit(request: Any, key: ApiKey | None) -> None:
            request.key_id = MASTER_KEY_ID if key is None else key.id
            request.key_models = None if key is None else key.models  # /v1/models lists these
            if key is not None and check_model and key.models is not None:
                self.check_model(key, request.body)

        def run(request: Any, channel: Any) -> Any:
            counted = metrics is not None and metrics.request_started(request.request_id)
            try:
                result = handler(request, channel)
            except BaseException:
                if counted:
                    metrics.request_ended(request.request_id)
                raise
            if counted and hasattr(result, "__await__"):
                return until_done(request, result)
            return result

        async def until_done(request: Any, awaitable: Any) -> Any:
            try:
                return await awaitable
            except BaseException:
                metrics.request_ended(request.request_id)
                raise

        async def after_lookup(request: Any, channel: Any) -> Any:
            admit(request, await self.authenticate(request.headers))
            result = run(request, channel)
            if hasattr(result, "__await__"):
                result = await result
            return result

        # Plain, so that a handler that needs no task (an idle pooled connection, a cached key)
        # runs none: a coroutine the handler returns goes back to the front door as it is.
        def guarded(request: Any, channel: Any) -> Any:
            if self._master is not None:
                key = self.authenticate_cached(request.headers)
                if key is _MISS:
                    return after_lookup(request, channel)
                admit(request, key)
            return run(request, channel)

        return guarded


def _managed(store: LedgerStore | None) -> str:
    return "available" if store is not None else "unavailable (the ledger is off)"
