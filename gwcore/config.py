"""Gateway configuration: provider keys from the environment and a YAML file, upstream settings.

It owns reading and validating configuration into plain dataclasses (``GatewayConfig``) and the
error a bad configuration gets (``ConfigError``, naming the offending field). It never contacts a
provider, never logs or echoes an API key (``repr`` hides them), and never reads a file other than
the one it is given (``--config FILE`` or ``GWCORE_CONFIG``).

YAML shape::

    from_env: true            # also add providers from *_API_KEY variables (default true)
    upstream: {max_per_origin: 256, connect_timeout: 10, header_timeout: 60,
               idle_timeout: 120, keepalive_idle: 30}
    providers:
      - name: groq-fast       # unique, no "/"; defaults to the type
        type: groq            # openai azure openrouter groq xai ollama openai_compatible
                              # anthropic gemini
        base_url: https://api.groq.com/openai/v1   # default per type
        api_key_env: GROQ_KEY_A                    # or api_key: literal
        models: [llama-3.3-70b-versatile]
        aliases: {fast: llama-3.1-8b-instant}
        headers: {X-Title: my-app}                 # extra static headers
        api_version: 2024-10-21                    # azure only

Other top-level sections are kept in ``GatewayConfig.extra`` for the layers that own them.
Providers from the file come first (they win bare-model ties), then those from the environment
whose name the file does not use.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

from gwcore.errors import GatewayError
from gwcore.providers import DEFAULT_BASE_URLS, KINDS
from gwcore.upstream import header_block, parse_base_url

if TYPE_CHECKING:
    from gwcore.providers import ProviderRegistry
    from gwcore.upstream import UpstreamPool

__all__ = [
    "ENV_PROVIDERS",
    "ConfigError",
    "GatewayConfig",
    "ProviderConfig",
    "UpstreamConfig",
    "load_config",
    "parse_config",
    "providers_from_env",
]

# kind -> (API key variable, base URL variable); a provider appears when its key is set (Ollama:
# its base URL; OpenAI: either, so a keyless local server works).
ENV_PROVIDERS: dict[str, tuple[str | None, str]] = {
    "openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL"),
    "azure": ("AZURE_API_KEY", "AZURE_BASE_URL"),
    "openrouter": ("OPENROUTER_API_KEY", "OPENROUTER_BASE_URL"),
    "groq": ("GROQ_API_KEY", "GROQ_BASE_URL"),
    "xai": ("XAI_API_KEY", "XAI_BASE_URL"),
    "ollama": (None, "OLLAMA_BASE_URL"),
    "anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"),
    "gemini": ("GEMINI_API_KEY", "GEMINI_BASE_URL"),
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PROVIDER_FIELDS = {
    "name",
    "type",
    "base_url",
    "api_key",
    "api_key_env",
    "api_version",
    "models",
    "aliases",
    "headers",
}
_CONFIG_KINDS = tuple(k for k in KINDS if k != "demo")


class ConfigError(ValueError):
    """A configuration problem; ``field`` says where (``providers[1].base_url``, an env var)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


@dataclass(slots=True)
class ProviderConfig:
    name: str
    type: str
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    models: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    api_version: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    source: str = "file"  # "file" | "env"


@dataclass(slots=True)
class UpstreamConfig:
    max_per_origin: int = 256
    connect_timeout: float = 10.0
    header_timeout: float | None = 60.0
    idle_timeout: float | None = 120.0
    keepalive_idle: float = 30.0

    def pool_kwargs(self) -> dict[str, Any]:
        return {
            "max_per_origin": self.max_per_origin,
            "connect_timeout": self.connect_timeout,
            "header_timeout": self.header_timeout,
            "idle_timeout": self.idle_timeout,
            "keepalive_idle": self.keepalive_idle,
        }


@dataclass(slots=True)
class GatewayConfig:
    providers: list[ProviderConfig] = field(default_factory=list)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    path: str | None = None  # the file it came from
    extra: dict[str, Any] = field(default_factory=dict)  # other top-level sections

    def build_registry(self) -> ProviderRegistry:
        from gwcore.providers import ProviderRegistry

        return ProviderRegistry.from_config(self)

    def build_pool(self) -> UpstreamPool:
        from gwcore.upstream import UpstreamPool

        return UpstreamPool(**self.upstream.pool_kwargs())


# ------------------------------------------------------------------------------------- loading


def load_config(path: str | None = None, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Configuration from ``path`` (else ``$GWCORE_CONFIG``, else none) and the environment."""
    env = os.environ if environ is None else environ
    path = path or env.get("GWCORE_CONFIG") or None
    data: Any = {}
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read the config file: {exc.strerror or exc}", path) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML: {exc}", path) from None
    config = parse_config(data if data is not None else {}, env)
    config.path = path
    return config


def parse_config(data: Any, environ: Mapping[str, str]) -> GatewayConfig:
    """Validate an already-parsed YAML document (a mapping) plus the environment."""
    if not isinstance(data, Mapping):
        raise ConfigError("the config file must be a mapping at the top level")
    config = GatewayConfig()
    for key, value in data.items():
        if key == "providers":
            config.providers = _parse_providers(value, environ)
        elif key == "upstream":
            config.upstream = _parse_upstream(value)
        elif key == "from_env":
            if not isinstance(value, bool):
                raise ConfigError("must be true or false", "from_env")
        else:
            config.extra[str(key)] = value
    if data.get("from_env", True):
        taken = {p.name for p in config.providers}
        config.providers += [p for p in providers_from_env(environ) if p.name not in taken]
    return config


def providers_from_env(environ: Mapping[str, str]) -> list[ProviderConfig]:
    """One provider per kind whose variables are set, named after the kind."""
    out = []
    for kind, (key_var, base_var) in ENV_PROVIDERS.items():
        key = (environ.get(key_var) or "").strip() if key_var else ""
        base = (environ.get(base_var) or "").strip()
        wanted = bool(key) or (kind in ("openai", "ollama") and bool(base))
        if not wanted:
            continue
        if base:
            _check_url(base, base_var)
        elif DEFAULT_BASE_URLS[kind] is None:
            raise ConfigError(f"required when {key_var} is set", base_var)
        if key:
            _check_header("authorization", "Bearer " + key, key_var, secret=True)
        version = None
        if kind == "azure":
            version = (environ.get("AZURE_API_VERSION") or "").strip() or None
        out.append(
            ProviderConfig(
                name=kind,
                type=kind,
                base_url=base or None,
                api_key=key or None,
                api_version=version,
                source="env",
            )
        )
    return out


# ------------------------------------------------------------------------------------ sections


def _check_url(url: str, where: str) -> None:
    try:
        parse_base_url(url)
    except ValueError as exc:
        raise ConfigError(str(exc), where) from None


def _check_header(name: str, value: str, where: str, *, secret: bool = False) -> None:
    """``name: value`` as every request to the provider will carry it: refused here, at start-up,
    not on each request (a 400 for the client, no usage record). A key's value is never echoed."""
    try:
        header_block([(name, value)])
    except GatewayError:
        if secret:
            raise ConfigError(
                "contains a character a header cannot carry (a control character such as a line "
                "break, or one outside latin-1)",
                where,
            ) from None
        raise ConfigError(
            f"{name!r} is not a valid header (a token name; a value without control characters, "
            "latin-1 only)",
            where,
        ) from None


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("must be a non-empty string", where)
    return value.strip()


def _parse_providers(value: Any, environ: Mapping[str, str]) -> list[ProviderConfig]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError("must be a list of providers", "providers")
    out: list[ProviderConfig] = []
    names: set[str] = set()
    for i, item in enumerate(value):
        at = f"providers[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError("must be a mapping with at least a type", at)
        unknown = sorted(set(map(str, item)) - _PROVIDER_FIELDS)
        if unknown:
            raise ConfigError(
                f"unknown field (known: {', '.join(sorted(_PROVIDER_FIELDS))})",
                f"{at}.{unknown[0]}",
            )
        if "type" not in item:
            raise ConfigError(f"required (one of: {', '.join(_CONFIG_KINDS)})", f"{at}.type")
        kind = _str(item["type"], f"{at}.type").lower()
        if kind not in _CONFIG_KINDS:
            raise ConfigError(
                f"unknown provider type {kind!r} (one of: {', '.join(_CONFIG_KINDS)})", f"{at}.type"
            )
        name = _str(item["name"], f"{at}.name") if "name" in item else kind
        if not _NAME.match(name):
            raise ConfigError("letters, digits, '.', '_' and '-' only (no '/')", f"{at}.name")
        if name in names:
            raise ConfigError(f"duplicate provider name {name!r}", f"{at}.name")
        names.add(name)

        base_url = None
        if item.get("base_url") is not None:
            base_url = _str(item["base_url"], f"{at}.base_url")
            _check_url(base_url, f"{at}.base_url")
        elif DEFAULT_BASE_URLS[kind] is None:
            raise ConfigError(f"required for type {kind}", f"{at}.base_url")

        if "api_key" in item and "api_key_env" in item:
            raise ConfigError("give api_key or api_key_env, not both", f"{at}.api_key_env")
        api_key = None
        if item.get("api_key") is not None:
            api_key = _str(item["api_key"], f"{at}.api_key")
        elif "api_key_env" in item:
            var = _str(item["api_key_env"], f"{at}.api_key_env")
            api_key = (environ.get(var) or "").strip()
            if not api_key:
                raise ConfigError(f"the environment variable {var} is not set", f"{at}.api_key_env")

        if api_key is not None:
            where = f"{at}.api_key" if "api_key" in item else f"{at}.api_key_env"
            _check_header("authorization", "Bearer " + api_key, where, secret=True)

        models = item.get("models") or []
        if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
            raise ConfigError("must be a list of model names", f"{at}.models")
        aliases = item.get("aliases") or {}
        if not isinstance(aliases, Mapping) or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in aliases.items()
        ):
            raise ConfigError("must map alias names to upstream model names", f"{at}.aliases")
        headers = item.get("headers") or {}
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, (str, int)) for k, v in headers.items()
        ):
            raise ConfigError("must map header names to values", f"{at}.headers")
        for header, value in headers.items():
            _check_header(header, str(value), f"{at}.headers")
        api_version = item.get("api_version")
        if api_version is not None:
            if kind != "azure":
                raise ConfigError("only for type azure", f"{at}.api_version")
            api_version = _str(str(api_version), f"{at}.api_version")
        out.append(
            ProviderConfig(
                name=name,
                type=kind,
                base_url=base_url,
                api_key=api_key,
                models=list(models),
                aliases=dict(aliases),
                api_version=api_version,
                headers={k: str(v) for k, v in headers.items()},
            )
        )
    return out


def _parse_upstream(value: Any) -> UpstreamConfig:
    if value is None:
        return UpstreamConfig()
    if not isinstance(value, Mapping):
        raise ConfigError("must be a mapping", "upstream")
    cfg = UpstreamConfig()
    for key, v in value.items():
        at = f"upstream.{key}"
        if key == "max_per_origin":
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError("must be a positive integer", at)
            cfg.max_per_origin = v
        elif key in ("connect_timeout", "keepalive_idle", "header_timeout", "idle_timeout"):
            nullable = key in ("header_timeout", "idle_timeout")
            if v is None and nullable:
                setattr(cfg, key, None)
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                extra = " (or null to disable)" if nullable else ""
                raise ConfigError(f"must be a positive number of seconds{extra}", at)
            setattr(cfg, key, float(v))
        else:
            raise ConfigError(
                "unknown setting (known: max_per_origin, connect_timeout, header_timeout, "
                "idle_timeout, keepalive_idle)",
                at,
            )
    return cfg
