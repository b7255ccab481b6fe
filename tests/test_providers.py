"""Provider registry, routing and configuration (env + YAML); model lists against the mock."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from gwcore.config import ConfigError, load_config, parse_config
from gwcore.errors import GatewayError
from gwcore.providers import Provider, ProviderRegistry, parse_model_list
from gwcore.testing import MockUpstream, Scenario, recorded_fixture, run
from gwcore.upstream import Origin, UpstreamPool

ALL_ENV = {
    "OPENAI_API_KEY": "sk-openai",
    "AZURE_API_KEY": "az-key",
    "AZURE_BASE_URL": "https://res.openai.azure.com/openai/deployments/gpt4o",
    "AZURE_API_VERSION": "2025-01-01-preview",
    "OPENROUTER_API_KEY": "or-key",
    "GROQ_API_KEY": "gq-key",
    "XAI_API_KEY": "xai-key",
    "OLLAMA_BASE_URL": "http://127.0.0.1:11434",
    "ANTHROPIC_API_KEY": "ant-key",
    "GEMINI_API_KEY": "gem-key",
}


def registry(env: dict, data: dict | None = None) -> ProviderRegistry:
    return parse_config(data or {}, env).build_registry()


# ------------------------------------------------------------------------------------ environment


def test_no_provider_means_demo_only():
    reg = registry({})
    assert reg.demo_only and [p.kind for p in reg] == ["demo"]
    p, model, rewritten = reg.resolve("anything-at-all")
    assert (p.name, model, rewritten) == ("demo", "anything-at-all", False)
    assert reg.list_models()[0]["id"] == "demo/demo-model"
    assert not registry({"GROQ_API_KEY": "k"}).demo_only


def test_every_provider_from_the_environment():
    reg = registry(ALL_ENV)
    assert not reg.demo_only
    kinds = ["openai", "azure", "openrouter", "groq", "xai", "ollama", "anthropic", "gemini"]
    assert [p.name for p in reg] == kinds
    by = {p.name: p for p in reg}
    assert by["openai"].origin == Origin("https", "api.openai.com", 443)
    assert by["openai"].base_path == "/v1"
    assert by["openai"].headers() == [("Authorization", "Bearer sk-openai")]
    assert by["openrouter"].base_url == "https://openrouter.ai/api/v1"
    assert by["groq"].path("/chat/completions") == "/openai/v1/chat/completions"
    assert by["xai"].origin.host == "api.x.ai"
    assert by["ollama"].origin == Origin("http", "127.0.0.1", 11434)
    assert by["ollama"].base_path == "/v1" and by["ollama"].headers() == []
    azure = by["azure"]
    assert azure.headers() == [("api-key", "az-key")]
    assert azure.path("/chat/completions") == (
        "/openai/deployments/gpt4o/chat/completions?api-version=2025-01-01-preview"
    )
    assert by["anthropic"].dialect == "anthropic"
    assert by["anthropic"].headers() == [
        ("x-api-key", "ant-key"),
        ("anthropic-version", "2023-06-01"),
    ]
    assert by["gemini"].dialect == "gemini"
    assert by["gemini"].base_url == "https://generativelanguage.googleapis.com/v1beta"
    assert by["gemini"].headers() == [("x-goog-api-key", "gem-key")]
    assert by["gemini"].models_path() == "/v1beta/models?pageSize=1000"
    assert "sk-openai" not in repr(by["openai"])  # keys never in a repr or a log line


def test_environment_base_urls_and_errors():
    reg = registry({"OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"})  # keyless local server
    p = reg.providers[0]
    assert (p.origin, p.headers()) == (Origin("http", "127.0.0.1", 8000), [])
    reg = registry({"ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": "http://127.0.0.1:9/v1"})
    assert reg.providers[0].origin.scheme == "http"
    with pytest.raises(ConfigError) as info:
        registry({"AZURE_API_KEY": "k"})
    assert info.value.field == "AZURE_BASE_URL"
    with pytest.raises(ConfigError) as info:
        registry({"GROQ_API_KEY": "k", "GROQ_BASE_URL": "api.groq.com/v1"})
    assert info.value.field == "GROQ_BASE_URL"
    # the v1 Azure API needs no api-version
    p = registry({"AZURE_API_KEY": "k", "AZURE_BASE_URL": "https://r.openai.azure.com/openai/v1"})
    assert p.providers[0].path("/chat/completions") == "/openai/v1/chat/completions"


# ------------------------------------------------------------------------------------------- YAML

YAML = """
upstream:
  max_per_origin: 8
  connect_timeout: 2.5
  idle_timeout: null
providers:
  - name: groq-a
    type: groq
    api_key_env: GROQ_KEY_A
    models: [llama-3.3-70b-versatile]
    aliases: {fast: llama-3.1-8b-instant}
  - name: groq-b
    type: groq
    api_key: literal-b
    models: [llama-3.3-70b-versatile, qwen-qwq-32b]
  - name: local
    type: openai_compatible
    base_url: http://127.0.0.1:8000/v1
    headers: {X-Team: core}
server:
  port: 8080
"""


def test_yaml_with_several_providers_of_one_type(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text(YAML)
    env = {"GROQ_KEY_A": "key-a", "OPENAI_API_KEY": "sk"}
    config = load_config(str(path), env)
    assert config.path == str(path)
    assert [(p.name, p.type, p.source) for p in config.providers] == [
        ("groq-a", "groq", "file"),
        ("groq-b", "groq", "file"),
        ("local", "openai_compatible", "file"),
        ("openai", "openai", "env"),
    ]
    assert config.extra == {"server": {"port": 8080}}
    pool = config.build_pool()
    assert (pool.max_per_origin, pool.connect_timeout, pool.idle_timeout) == (8, 2.5, None)
    assert pool.header_timeout == 60.0
    reg = config.build_registry()
    by = {p.name: p for p in reg}
    assert by["groq-a"].headers() == [("Authorization", "Bearer key-a")]
    assert by["groq-b"].headers() == [("Authorization", "Bearer literal-b")]
    assert by["local"].headers() == [("X-Team", "core")]
    # the first configured provider wins a bare model both list
    assert reg.resolve("llama-3.3-70b-versatile")[0].name == "groq-a"
    assert reg.resolve("qwen-qwq-32b")[0].name == "groq-b"
    assert reg.resolve("groq-b/llama-3.3-70b-versatile")[:2] == (
        by["groq-b"],
        "llama-3.3-70b-versatile",
    )
    # GWCORE_CONFIG names the file when no path is given
    assert len(load_config(None, {"GWCORE_CONFIG": str(path), "GROQ_KEY_A": "x"}).providers) == 3


def test_from_env_false_and_file_names_win(tmp_path):
    data = {"from_env": False, "providers": [{"type": "groq", "api_key": "file"}]}
    assert [p.name for p in parse_config(data, {"OPENAI_API_KEY": "x"}).providers] == ["groq"]
    data = {"providers": [{"type": "groq", "api_key": "file"}]}
    providers = parse_config(data, {"GROQ_API_KEY": "env"}).providers
    assert [(p.name, p.api_key) for p in providers] == [("groq", "file")]


@pytest.mark.parametrize(
    ("data", "env", "field"),
    [
        ({"providers": [{"type": "groq", "modles": []}]}, {}, "providers[0].modles"),
        ({"providers": [{"name": "x"}]}, {}, "providers[0].type"),
        ({"providers": [{"type": "bard"}]}, {}, "providers[0].type"),
        ({"providers": [{"type": "groq", "api_key_env": "NOPE"}]}, {}, "providers[0].api_key_env"),
        (
            {"providers": [{"type": "groq", "api_key": "a", "api_key_env": "B"}]},
            {"B": "b"},
            "providers[0].api_key_env",
        ),
        ({"providers": [{"type": "groq"}, {"type": "groq"}]}, {}, "providers[1].name"),
        ({"providers": [{"type": "groq", "name": "a/b"}]}, {}, "providers[0].name"),
        ({"providers": [{"type": "openai_compatible"}]}, {}, "providers[0].base_url"),
        ({"providers": [{"type": "azure", "base_url": "https://x/openai/v1"}]}, {}, None),
        ({"providers": [{"type": "groq", "base_url": "ftp://x"}]}, {}, "providers[0].base_url"),
        ({"providers": [{"type": "groq", "models": "m"}]}, {}, "providers[0].models"),
        ({"providers": [{"type": "groq", "aliases": ["a"]}]}, {}, "providers[0].aliases"),
        ({"providers": [{"type": "groq", "api_version": "1"}]}, {}, "providers[0].api_version"),
        ({"providers": {"type": "groq"}}, {}, "providers"),
        ({"upstream": {"max_per_origin": 0}}, {}, "upstream.max_per_origin"),
        ({"upstream": {"connect_timeout": "fast"}}, {}, "upstream.connect_timeout"),
        ({"upstream": {"read_timeout": 1}}, {}, "upstream.read_timeout"),
        ({"from_env": "yes"}, {}, "from_env"),
        # what every request would carry as a header: refused at start-up
        (
            {"providers": [{"type": "groq", "headers": {"X-T": "a\r\nb"}}]},
            {},
            "providers[0].headers",
        ),
        ({"providers": [{"type": "groq", "headers": {"X T": "a"}}]}, {}, "providers[0].headers"),
        ({"providers": [{"type": "groq", "headers": {"X-T": "caf\u00e9 \t1"}}]}, {}, None),
        ({"providers": [{"type": "groq", "api_key": "sk\nx"}]}, {}, "providers[0].api_key"),
        (
            {"providers": [{"type": "groq", "api_key_env": "K"}]},
            {"K": "sk-\x00"},
            "providers[0].api_key_env",
        ),
        ({"from_env": True}, {"GROQ_API_KEY": "sk\r\nInjected: 1"}, "GROQ_API_KEY"),
        ({"from_env": True}, {"GROQ_API_KEY": " sk-ok\n"}, None),  # (stripped)
    ],
)
def test_config_errors_name_the_field(data, env, field):
    if field is None:  # a valid one, for contrast
        parse_config(data, env)
        return
    with pytest.raises(ConfigError) as info:
        parse_config(data, env)
    assert info.value.field == field
    assert str(info.value).startswith(field + ": ")
    providers = data.get("providers")
    listed = providers if isinstance(providers, list) else []
    keys = [*env.values(), *(p.get("api_key", "") for p in listed)]
    for key in keys:  # a key a header cannot carry is refused without being echoed
        if not key.strip().isprintable():
            assert key.strip() not in str(info.value) and "sk" not in str(info.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"), {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(str(bad), {})
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(bad), {})
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(str(empty), {}).build_registry().demo_only


# ---------------------------------------------------------------------------------------- routing


def test_resolve_rules():
    reg = ProviderRegistry(
        [
            Provider.create("openai", "openai", api_key="k", models=["gpt-4o", "gpt-4o-mini"]),
            Provider.create(
                "openrouter",
                "openrouter",
                api_key="k",
                models=["meta-llama/llama-3.3-70b-instruct", "gpt-4o"],
                aliases={"llama": "meta-llama/llama-3.3-70b-instruct"},
            ),
            Provider.create("claude", "anthropic", api_key="k", aliases={"sonnet": "claude-x"}),
        ]
    )
    by = {p.name: p for p in reg}
    # qualified by provider NAME: rewritten, split at the first "/" only
    assert reg.resolve("openrouter/meta-llama/llama-3.3-70b-instruct") == (
        by["openrouter"],
        "meta-llama/llama-3.3-70b-instruct",
        True,
    )
    assert reg.resolve("openai/o3") == (by["openai"], "o3", True)
    assert reg.resolve("claude/sonnet") == (by["claude"], "claude-x", True)
    # bare: model lists, first configured wins
    assert reg.resolve("gpt-4o") == (by["openai"], "gpt-4o", False)
    assert reg.resolve("meta-llama/llama-3.3-70b-instruct") == (
        by["openrouter"],
        "meta-llama/llama-3.3-70b-instruct",
        False,
    )
    # aliases
    assert reg.resolve("sonnet") == (by["claude"], "claude-x", True)
    assert reg.resolve("llama")[:2] == (by["openrouter"], "meta-llama/llama-3.3-70b-instruct")
    # unknown
    with pytest.raises(GatewayError) as info:
        reg.resolve("mystery-model")
    err = info.value
    assert (err.status, err.code, err.param, err.type) == (
        404,
        "model_not_found",
        "model",
        "not_found_error",
    )
    with pytest.raises(GatewayError) as info:
        reg.resolve("")
    assert info.value.status == 400


def test_single_provider_takes_any_bare_model():
    reg = ProviderRegistry([Provider.create("openrouter", "openrouter", api_key="k")])
    p, model, rewritten = reg.resolve("meta-llama/Llama-3")  # "meta-llama" is not a provider
    assert (p.name, model, rewritten) == ("openrouter", "meta-llama/Llama-3", False)
    assert reg.resolve("openrouter/x-ai/grok")[1:] == ("x-ai/grok", True)


def test_provider_headers_never_carry_the_callers_credentials():
    p = Provider.create("openai", "openai", api_key="sk-provider", headers={"X-Title": "gw"})
    client = [
        ("Authorization", "Bearer client-key"),
        ("api-key", "client"),
        ("x-api-key", "client"),
        ("Cookie", "session=1"),
        ("OpenAI-Organization", "org-client"),
        ("X-Title", "client-title"),
        ("Accept", "text/event-stream"),
        ("User-Agent", "sdk/1"),
    ]
    assert p.request_headers(client) == [
        ("Authorization", "Bearer sk-provider"),
        ("X-Title", "gw"),
        ("Accept", "text/event-stream"),
        ("User-Agent", "sdk/1"),
    ]
    keyless = Provider.create("ollama", "ollama", "http://127.0.0.1:11434")
    assert keyless.request_headers([("Authorization", "Bearer client")]) == []


# ------------------------------------------------------------------------------------ model lists


def test_parse_model_list_shapes():
    assert parse_model_list("openai_chat", {"data": [{"id": "a", "created": 5}, {"x": 1}]}) == [
        ("a", 5)
    ]
    assert parse_model_list("gemini", {"models": [{"name": "models/gemini-2.5-pro"}]}) == [
        ("gemini-2.5-pro", None)
    ]
    anthropic = {"data": [{"id": "claude-x", "created_at": "2025-01-01T00:00:00Z"}]}
    assert parse_model_list("anthropic", anthropic) == [("claude-x", 1735689600)]
    with pytest.raises(ValueError):
        parse_model_list("openai_chat", {"object": "list"})
    path = recorded_fixture(__file__, "gemini", "models.json")
    if path is not None:
        ids = [m for m, _ in parse_model_list("gemini", json.loads(path.read_text()))]
        assert "gemini-2.5-pro" in ids and not any(m.startswith("models/") for m in ids)


def test_refresh_models_against_the_mock_and_tolerates_failures():
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()

    async def main():
        async with MockUpstream(models=["m-one", "m-two"]) as mock:
            reg = ProviderRegistry(
                [
                    Provider.create("oai", "openai", mock.base_url, "sk-a", models=["declared"]),
                    Provider.create("ant", "anthropic", mock.url + "/v1", "ant-k"),
                    Provider.create("gem", "gemini", mock.url + "/v1beta", "gem-k"),
                    Provider.create("down", "groq", f"http://127.0.0.1:{dead_port}/v1", "k"),
                ]
            )
            pool = UpstreamPool(connect_timeout=1)
            report = await reg.refresh_models(pool)
            assert report["oai"] is None and report["ant"] is None and report["gem"] is None
            assert "cannot connect" in report["down"]
            by = {p.name: p for p in reg}
            assert by["oai"].model_ids() == ["declared", "m-one", "m-two"]
            assert by["ant"].model_ids() == ["m-one", "m-two"]
            assert by["gem"].model_ids() == ["m-one", "m-two"]  # "models/" prefix gone
            assert reg.resolve("m-two")[0] is by["oai"]  # first configured wins
            reqs = {r.path: r for r in mock.requests}
            assert reqs["/v1/models"].header("authorization") == "Bearer sk-a"
            assert reqs["/v1/models?limit=1000"].header("x-api-key") == "ant-k"
            assert reqs["/v1beta/models?pageSize=1000"].header("x-goog-api-key") == "gem-k"
            ids = {e["id"]: e for e in reg.list_models()}
            assert ids["oai/m-one"] == {
                "id": "oai/m-one",
                "object": "model",
                "created": 1700000000,
                "owned_by": "oai",
            }
            assert "oai/declared" in ids and "gem/m-two" in ids
            assert "down/m-one" not in ids

            # a failing refresh keeps the previous list
            mock.scenarios.append(Scenario.error(500, "boom", "server_error"))
            mock.scenarios.append(Scenario(body=b"not json", content_type="application/json"))
            mock.scenarios.append(Scenario(body=b"not json", content_type="application/json"))
            report = await reg.refresh_models(pool)
            assert all(report[n] for n in ("oai", "ant", "gem"))
            assert by["oai"].model_ids() == ["declared", "m-one", "m-two"]
            assert by["gem"].model_ids() == ["m-one", "m-two"]

            assert reg.resolve("m-one")[0] is by["oai"]  # (remembered until the lists change)
            mock.models = ["m-three"]
            task = reg.start_refresher(pool, interval=0.05)
            assert reg.start_refresher(pool) is task
            for _ in range(100):
                if "m-three" in by["oai"].model_ids():
                    break
                await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert by["oai"].model_ids() == ["declared", "m-three"]
            assert reg.resolve("m-three")[0] is by["oai"]
            with pytest.raises(GatewayError) as err:  # no provider lists it any more
                reg.resolve("m-one")
            assert err.value.status == 404
            await pool.aclose()

    run(main())


def test_resolved_names_remembered_within_a_bound():
    reg = ProviderRegistry()  # the demo provider alone: every bare name goes to it
    names = [f"model-{i}" for i in range(10_000)]
    for name in names:
        assert reg.resolve(name) == (reg.providers[0], name, False)
    assert 0 < len(reg._routes) <= 4096  # any number of client-chosen names, bounded memory
    assert reg.resolve(names[-1]) is reg.resolve(names[-1])  # the remembered answer
    for bad in ("", None, 3, ["m"]):  # never remembered, never a TypeError
        with pytest.raises(GatewayError):
            reg.resolve(bad)


def test_gateway_shutdown_stops_the_model_list_refresher():
    """A refresher left pending when the loop closes is logged as an error at every stop."""
    from gwcore.gateway import Gateway
    from gwcore.usage import MemorySink

    async def main():
        async with MockUpstream() as mock:
            provider = {
                "name": "mock",
                "type": "openai_compatible",
                "base_url": mock.base_url,
                "models": ["gpt-test"],
            }
            config = parse_config({"from_env": False, "providers": [provider]}, {})
            gateway = Gateway(config, sink=MemorySink())
            await gateway.startup()
            task = gateway.registry._refresher
            assert task is not None and not task.done()
            await gateway.shutdown()
            assert task.cancelled()
            await gateway.shutdown()  # twice: nothing left to stop

    run(main())
