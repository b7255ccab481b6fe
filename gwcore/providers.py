# cython: annotation_typing=False
# Cython compiles this file in place; it is also the pure-Python twin (see gwcore/_twins.py).
# Annotations only document here: they never become C-level type checks.
"""The provider registry: which upstream serves a model, where it lives, how to authenticate.

It owns provider kinds (dialect, default base URL, auth header shape), routing of a client's
``model`` string to (provider, upstream model), the merged model lists (declared + fetched from
each provider's ``/models``) and the OpenAI ``/v1/models`` listing.

It never takes credentials from a client request (auth headers come from the provider only), never
logs an API key, and ``resolve`` (once per request) is dictionary look-ups only; model lists are
fetched in the background, a failed fetch keeps the previous list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import orjson

from gwcore.errors import GatewayError
from gwcore.upstream import Origin, UpstreamPool, parse_base_url

if TYPE_CHECKING:
    from gwcore.config import GatewayConfig, ProviderConfig

__all__ = [
    "CREDENTIAL_HEADERS",
    "DEFAULT_BASE_URLS",
    "DEMO_MODELS",
    "DIALECTS",
    "KINDS",
    "Provider",
    "ProviderRegistry",
    "demo_provider",
    "parse_model_list",
]

log = logging.getLogger("gwcore.providers")

KINDS = (
    "openai",
    "azure",
    "openrouter",
    "groq",
    "xai",
    "ollama",
    "openai_compatible",
    "anthropic",
    "gemini",
    "demo",
)
DIALECTS = {kind: "openai_chat" for kind in KINDS} | {"anthropic": "anthropic", "gemini": "gemini"}
DEFAULT_BASE_URLS: dict[str, str | None] = {
    "openai": "https://api.openai.com/v1",
    # required: https://RESOURCE.openai.azure.com/openai/deployments/NAME or .../openai/v1
    "azure": None,
    "openrouter": "https://openrouter.ai/api/v1",
    "groq": "https://api.groq.com/openai/v1",
    "xai": "https://api.x.ai/v1",
    "ollama": "http://127.0.0.1:11434/v1",
    "openai_compatible": None,  # required
    "anthropic": "https://api.anthropic.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
    "demo": None,
}
AZURE_DEFAULT_API_VERSION = "2024-10-21"
ANTHROPIC_VERSION = "2023-06-01"
DEMO_MODELS = ("demo-model",)  # the names gwcore.demo answers to
# Never forwarded from a client to a provider.
CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "api-key",
        "x-api-key",
        "x-goog-api-key",
        "cookie",
        "openai-organization",
        "openai-project",
    }
)


@dataclass(slots=True, eq=False)
class Provider:
    """One configured upstream. ``base_path`` has no trailing slash ("/v1")."""

    name: str
    kind: str
    dialect: str
    base_url: str
    origin: Origin | None
    base_path: str
    api_key: str | None = field(default=None, repr=False)
    models: list[str] = field(default_factory=list)  # declared in config
    aliases: dict[str, str] = field(default_factory=dict)  # client name -> upstream model
    api_version: str | None = None  # Azure
    extra_headers: list[tuple[str, str]] = field(default_factory=list)
    discovered: list[str] = field(default_factory=list)  # from the provider's /models
    created: dict[str, int] = field(default_factory=dict)  # model -> epoch, when listed
    auth_headers: list[tuple[str, str]] = field(default_factory=list, repr=False)
    # Lowercase names of the client headers never forwarded to this provider: credentials,
    # cookies, and the headers it sets itself (what a client may not override).
    withheld: frozenset[str] = field(default=frozenset(), init=False, repr=False)

    def __post_init__(self) -> None:
        self.auth_headers = _auth_headers(self.kind, self.api_key)
        self.withheld = CREDENTIAL_HEADERS | {name.lower() for name, _ in self.headers()}

    @classmethod
    def create(
        cls,
        name: str,
        kind: str,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        models: Sequence[str] = (),
        aliases: Mapping[str, str] | None = None,
        api_version: str | None = None,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
    ) -> Provider:
        """Build a provider, filling the kind's defaults. Raises ``ValueError`` on a bad value."""
        if kind not in KINDS:
            raise ValueError(f"unknown provider type {kind!r} (one of: {', '.join(KINDS)})")
        if kind == "demo":
            return demo_provider(name)
        url = base_url or DEFAULT_BASE_URLS[kind]
        if not url:
            raise ValueError(f"a {kind} provider needs a base_url")
        origin, base_path = parse_base_url(url)
        if kind == "ollama" and not base_path:
            base_path = "/v1"  # Ollama's OpenAI-compatible API
        if kind == "azure" and api_version is None and not base_path.endswith("/openai/v1"):
            api_version = AZURE_DEFAULT_API_VERSION  # the v1 API needs none; deployments do
        extra = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        return cls(
            name=name,
            kind=kind,
            dialect=DIALECTS[kind],
            base_url=url.rstrip("/"),
            origin=origin,
            base_path=base_path,
            api_key=api_key or None,
            models=list(dict.fromkeys(models)),
            aliases=dict(aliases or {}),
            api_version=api_version if kind == "azure" else None,
            extra_headers=extra,
        )

    @classmethod
    def from_config(cls, cfg: ProviderConfig) -> Provider:
        return cls.create(
            cfg.name,
            cfg.type,
            cfg.base_url,
            cfg.api_key,
            models=cfg.models,
            aliases=cfg.aliases,
            api_version=cfg.api_version,
            headers=cfg.headers,
        )

    def headers(self) -> list[tuple[str, str]]:
        """Headers every upstream request to this provider carries: auth first, then extras."""
        return self.auth_headers + self.extra_headers

    def request_headers(self, forward: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
        """The provider's headers plus the caller's ``forward`` ones minus any credential, cookie
        or header the provider sets itself: a client's key never reaches a provider."""
        return self.headers() + self.forwardable(forward)

    def forwardable(self, forward: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The caller's ``forward`` headers minus any credential, cookie or header the provider
        sets itself (what goes with the provider's own headers)."""
        withheld = self.withheld
        return [(name, value) for name, value in forward if name.lower() not in withheld]

    def path(self, endpoint: str) -> str:
        """The request target for ``endpoint`` ("/chat/completions"), with Azure's api-version."""
        target = self.base_path + endpoint
        if self.api_version:
            target += ("&" if "?" in target else "?") + "api-version=" + self.api_version
        return target

    def models_path(self) -> str:
        if self.dialect == "anthropic":
            return self.path("/models?limit=1000")
        if self.dialect == "gemini":
            return self.path("/models?pageSize=1000")
        return self.path("/models")

    def model_ids(self) -> list[str]:
        """Declared models first, then those the provider listed, without duplicates."""
        return list(dict.fromkeys(self.models + self.discovered))


def _auth_headers(kind: str, api_key: str | None) -> list[tuple[str, str]]:
    if kind == "anthropic":
        out = [("anthropic-version", ANTHROPIC_VERSION)]
        return [("x-api-key", api_key), *out] if api_key else out
    if not api_key or kind == "demo":
        return []
    if kind == "azure":
        return [("api-key", api_key)]
    if kind == "gemini":
        return [("x-goog-api-key", api_key)]
    return [("Authorization", "Bearer " + api_key)]


def demo_provider(name: str = "demo") -> Provider:
    """The built-in canned model, served by the gateway itself (no origin, no key)."""
    return Provider(
        name=name,
        kind="demo",
        dialect="openai_chat",
        base_url="",
        origin=None,
        base_path="",
        models=list(DEMO_MODELS),
    )


def _epoch(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
        except ValueError:
            return None
    return None


def parse_model_list(dialect: str, payload: Any) -> list[tuple[str, int | None]]:
    """(model id, created epoch or None) from a ``/models`` answer: OpenAI/Anthropic ``data[].id``
    or Gemini ``models[].name``; Gemini names lose their ``models/`` prefix."""
    if not isinstance(payload, Mapping):
        raise ValueError("the model list is not a JSON object")
    items = payload.get("data")
    key = "id"
    if not isinstance(items, list):
        items, key = payload.get("models"), "name"
    if not isinstance(items, list):
        raise ValueError("the model list has neither data[] nor models[]")
    out = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        model = item.get(key) or item.get("id") or item.get("name")
        if not isinstance(model, str) or not model:
            continue
        if dialect == "gemini" and model.startswith("models/"):
            model = model[len("models/") :]
        out.append((model, _epoch(item.get("created", item.get("created_at")))))
    return out


_ROUTES_KEPT = 4096  # resolved model names remembered per registry


class ProviderRegistry:
    """All providers in configuration order; routes model names. With none configured it holds
    the demo provider alone (``demo_only``)."""

    def __init__(self, providers: Sequence[Provider] = ()) -> None:
        providers = list(providers)
        names = [p.name for p in providers]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate provider names in {names}")
        self.demo_only = not providers or all(p.kind == "demo" for p in providers)
        self.providers: list[Provider] = providers or [demo_provider()]
        self._by_name = {p.name: p for p in self.providers}
        self._created = int(time.time())
        self._aliases: dict[str, tuple[Provider, str]] = {}
        self._models: dict[str, Provider] = {}
        # model string -> resolve()'s answer; emptied by _reindex (the lists changed) and when full
        self._routes: dict[str, tuple[Provider, str, bool]] = {}
        self._refresher: asyncio.Task | None = None
        self._reindex()

    @classmethod
    def from_config(cls, config: GatewayConfig) -> ProviderRegistry:
        return cls([Provider.from_config(p) for p in config.providers])

    def get(self, name: str) -> Provider | None:
        return self._by_name.get(name)

    def __iter__(self) -> Iterator[Provider]:
        return iter(self.providers)

    def __len__(self) -> int:
        return len(self.providers)

    def _reindex(self) -> None:
        aliases: dict[str, tuple[Provider, str]] = {}
        models: dict[str, Provider] = {}
        for p in self.providers:  # first configured wins
            for alias, target in p.aliases.items():
                aliases.setdefault(alias, (p, target))
            for model in p.model_ids():
                models.setdefault(model, p)
        self._aliases, self._models = aliases, models
        self._routes = {}

    # ---- routing

    def allowed(self, patterns: Sequence[str], model: str) -> bool:
        """Whether an API key's allow-list (``model``, ``provider/model`` or a glob such as
        ``provider/*``; a bare name matches it on any provider) admits ``model``: as named, and
        as what it resolves to."""
        names = {model}
        try:
            provider, upstream, _ = self.resolve(model)
        except GatewayError:
            pass  # unknown: only the name as given can match
        else:
            names.add(upstream)
            names.add(f"{provider.name}/{upstream}")
        return any(fnmatchcase(n, p) for p in patterns for n in names)

    def resolve(self, model: str) -> tuple[Provider, str, bool]:
        """(provider, upstream model, rewritten). ``name/model`` picks a provider by NAME (split at
        the first ``/``); then aliases; then declared/listed models; then the only provider."""
        route = self._routes.get(model) if type(model) is str else None
        if route is not None:
            return route
        route = self._route(model)
        routes = self._routes
        if len(routes) >= _ROUTES_KEPT:  # clients may send any number of names
            routes.clear()
        routes[model] = route
        return route

    def _route(self, model: str) -> tuple[Provider, str, bool]:
        if not isinstance(model, str) or not model:
            raise GatewayError(
                400, "you must provide a model parameter", code="missing_model", param="model"
            )
        prefix, sep, rest = model.partition("/")
        if sep and rest:
            p = self._by_name.get(prefix)
            if p is not None:
                upstream = p.aliases.get(rest, rest)
                return p, upstream, upstream != model
        hit = self._aliases.get(model)
        if hit is not None:
            return hit[0], hit[1], hit[1] != model
        p = self._models.get(model)
        if p is not None:
            return p, model, False
        if len(self.providers) == 1:
            return self.providers[0], model, False
        raise GatewayError(
            404,
            f"The model `{model}` does not exist or no configured provider serves it. "
            "Use `provider/model` or one of the ids GET /v1/models lists.",
            code="model_not_found",
            param="model",
        )

    # ---- model lists

    def list_models(self) -> list[dict[str, Any]]:
        """OpenAI ``/v1/models`` entries: ``provider/model`` for every model and alias."""
        out = []
        for p in self.providers:
            for model in [*p.model_ids(), *p.aliases]:
                out.append(
                    {
                        "id": f"{p.name}/{model}",
                        "object": "model",
                        "created": p.created.get(model, self._created),
                        "owned_by": p.name,
                    }
                )
        return list({entry["id"]: entry for entry in out}.values())

    async def refresh_models(
        self, pool: UpstreamPool, timeout: float = 15.0
    ) -> dict[str, str | None]:
        """Fetch every real provider's model list; returns name -> error text (None when fetched).
        A provider whose fetch fails keeps its previous list."""
        providers = [p for p in self.providers if p.origin is not None]
        results = await asyncio.gather(
            *(self._refresh_one(pool, p, timeout) for p in providers), return_exceptions=True
        )
        report: dict[str, str | None] = {}
        for p, result in zip(providers, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                msg = result.message if isinstance(result, GatewayError) else str(result)
                report[p.name] = msg or result.__class__.__name__
                log.warning("model list of provider %s not refreshed: %s", p.name, report[p.name])
            else:
                report[p.name] = None
        self._reindex()
        return report

    async def _refresh_one(self, pool: UpstreamPool, p: Provider, timeout: float) -> None:
        resp = await pool.request(
            p.origin,
            "GET",
            p.models_path(),
            [("Accept", "application/json"), *p.headers()],
            timeout=timeout,
        )
        if resp.status != 200:
            raise ValueError(f"GET {p.models_path()} answered {resp.status}")
        try:
            payload = orjson.loads(resp.body)
        except orjson.JSONDecodeError as exc:
            raise ValueError("the model list is not JSON") from exc
        listed = parse_model_list(p.dialect, payload)
        p.discovered = list(dict.fromkeys(m for m, _ in listed))
        p.created.update({m: c for m, c in listed if c is not None})

    def start_refresher(self, pool: UpstreamPool, interval: float = 300.0) -> asyncio.Task:
        """A task refreshing model lists now and every ``interval`` seconds; cancel it to stop."""
        if self._refresher is not None and not self._refresher.done():
            return self._refresher

        async def refresh_forever() -> None:
            while True:
                try:
                    await self.refresh_models(pool)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("model list refresh failed")
                await asyncio.sleep(interval)

        self._refresher = asyncio.get_running_loop().create_task(
            refresh_forever(), name="gwcore-model-lists"
        )
        return self._refresher

    async def stop_refresher(self) -> None:
        """Cancel the refresher (if any) and wait until it is gone: a task still pending when
        the loop closes is reported as an error ("Task was destroyed but it is pending")."""
        task, self._refresher = self._refresher, None
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
