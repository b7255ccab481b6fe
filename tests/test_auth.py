"""API keys: the master key, managed keys (create, use, revoke, expire, allow-list), open mode."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import pytest
from ledger_harness import (
    CLEAN_ENV,
    DB_URL,
    MASTER,
    chat,
    ledger_gateway,
    stream_once,
)

from gwcore.auth import KeyAuth, hash_key, presented_key
from gwcore.config import ConfigError
from gwcore.errors import GatewayError
from gwcore.ledger import LedgerSettings, UsageFilter, open_store
from gwcore.testing import run

pytestmark = pytest.mark.timeout(60)
db_url = DB_URL
clean_settings = CLEAN_ENV
KEYS = "/admin/api/v1/keys"


def _is_auth_error(resp, code: str | None = None) -> None:
    assert resp.status_code == 401
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "authentication_error"
    if code is not None:
        assert err["code"] == code


# ---- units ---------------------------------------------------------------------------------------


def test_presented_key_headers():
    assert presented_key({"authorization": "Bearer abc"}) == "abc"
    assert presented_key({"authorization": "bearer  abc "}) == "abc"
    assert presented_key({"x-api-key": "xyz"}) == "xyz"
    assert presented_key({"authorization": "Basic Zm9v", "x-api-key": "k"}) == "k"
    assert presented_key({"authorization": "Bearer"}) is None
    assert presented_key({}) is None


def test_master_key_compare_and_settings():
    auth = KeyAuth.from_env({"GWCORE_MASTER_KEY": " sk-m "}, {"key_cache_ttl": 2})
    assert auth.required and auth.key_cache_ttl == 2.0
    assert auth.is_master("sk-m") and not auth.is_master("sk-mm") and not auth.is_master("")
    assert not KeyAuth.from_env({}).required
    with pytest.raises(ConfigError, match=r"auth\.nope"):
        KeyAuth.from_env({}, {"nope": 1})

    async def main():
        assert await auth.authenticate({"authorization": "Bearer sk-m"}) is None  # the master
        with pytest.raises(GatewayError) as info:
            await auth.authenticate({"authorization": "Bearer other"})
        assert info.value.status == 401 and info.value.type == "authentication_error"

    run(main())


# ---- through the gateway -------------------------------------------------------------------------


def test_missing_and_wrong_keys_get_401_in_the_openai_shape(db_url):
    async def main():
        async with ledger_gateway(db_url) as h:
            async with h.client(None) as anon:
                _is_auth_error(
                    await anon.post("/v1/chat/completions", json=chat(False)), "missing_api_key"
                )
                _is_auth_error(await anon.get("/v1/models"), "missing_api_key")
                assert (await anon.get("/health")).status_code == 200
                assert (await anon.get("/metrics")).status_code == 200
            async with h.client("sk-wrong") as wrong:
                _is_auth_error(
                    await wrong.post("/v1/chat/completions", json=chat(False)), "invalid_api_key"
                )
            assert h.mock.requests == []  # nothing reached the provider
            await h.ledger.flush()
            assert (await h.store.summary(UsageFilter()))["requests"] == 0

    run(main(), use_uvloop=True)


def test_master_key_bearer_and_x_api_key(db_url):
    async def main():
        async with ledger_gateway(db_url) as h:
            async with h.client() as client:
                assert (await stream_once(client)).status_code == 200
            async with h.client(None) as anon:
                r = await anon.post(
                    "/v1/chat/completions", json=chat(False), headers={"x-api-key": MASTER}
                )
                assert r.status_code == 200
            await h.ledger.flush()
            entries, _ = await h.store.log(UsageFilter(), 10, None)
            assert [e["key_id"] for e in entries] == ["master", "master"]
            # The client's key never goes upstream.
            assert all(MASTER not in str(req.headers) for req in h.mock.requests)

    run(main(), use_uvloop=True)


def test_managed_key_create_use_revoke(db_url):
    async def main():
        async with ledger_gateway(db_url) as h, h.client() as admin:
            r = await admin.post(KEYS, json={"name": "team-a"})
            assert r.status_code == 201
            created = r.json()
            secret = created["key"]
            assert secret.startswith("gwk_") and created["status"] == "active"
            assert created["prefix"] == secret[:12] and "key_hash" not in created
            listed = (await admin.get(KEYS)).json()["data"]
            assert [k["id"] for k in listed] == [created["id"]] and "key" not in listed[0]

            async with h.client(secret) as user:
                assert (await stream_once(user)).status_code == 200
                async with h.client(None) as anon:
                    r = await anon.post(
                        "/v1/chat/completions", json=chat(False), headers={"x-api-key": secret}
                    )
                    assert r.status_code == 200
                _is_auth_error(await user.get("/admin/api/v1/usage/summary"))  # not the master
                r = await admin.delete(KEYS, params={"id": created["id"]})
                assert r.status_code == 200 and r.json()["status"] == "revoked"
                # This worker forgets the key at once.
                r = await user.post("/v1/chat/completions", json=chat(False))
                _is_auth_error(r, "invalid_api_key")
                assert "revoked" in r.json()["error"]["message"]
            await h.ledger.flush()
            entries, _ = await h.store.log(UsageFilter(key_id=created["id"]), 10, None)
            assert len(entries) == 2
            # Stored as a hash only.
            keys = await h.store.keys()
            assert keys[0].key_hash == hash_key(secret) and secret not in repr(keys)
            r = await admin.delete(KEYS, params={"id": "key_nope"})
            assert r.status_code == 404
            assert (await admin.delete(KEYS)).status_code == 400

    run(main(), use_uvloop=True)


def test_managed_key_expires(db_url):
    async def main():
        async with ledger_gateway(db_url) as h, h.client() as admin:
            r = await admin.post(KEYS, json={"expires_in": 0.6})
            assert r.status_code == 201
            secret = r.json()["key"]
            async with h.client(secret) as user:
                assert (
                    await user.post("/v1/chat/completions", json=chat(False))
                ).status_code == 200
                await asyncio.sleep(0.7)
                r = await user.post("/v1/chat/completions", json=chat(False))
                _is_auth_error(r)
                assert "expired" in r.json()["error"]["message"]
            assert (await admin.get(KEYS)).json()["data"][0]["status"] == "expired"
            r = await admin.post(KEYS, json={"expires_at": "2000-01-01"})
            async with h.client(r.json()["key"]) as user:
                _is_auth_error(await user.post("/v1/chat/completions", json=chat(False)))
            bad = await admin.post(KEYS, json={"expires_in": -1})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "expires_in"

    run(main(), use_uvloop=True)


def test_model_allow_list(db_url):
    async def main():
        async with ledger_gateway(db_url) as h, h.client() as admin:
            only = (await admin.post(KEYS, json={"models": ["gpt-test"]})).json()["key"]
            glob = (await admin.post(KEYS, json={"models": ["mock/*"]})).json()["key"]
            async with h.client(only) as user:
                assert (await stream_once(user)).status_code == 200
                ok = await user.post(
                    "/v1/chat/completions", json=chat(False, model="mock/gpt-test")
                )
                assert ok.status_code == 200
                r = await user.post("/v1/chat/completions", json=chat(False, model="gpt-other"))
                assert r.status_code == 403
                assert r.json()["error"]["code"] == "model_not_allowed"
                assert r.json()["error"]["type"] == "permission_error"
            async with h.client(glob) as user:
                r = await user.post("/v1/chat/completions", json=chat(False, model="gpt-other"))
                assert r.status_code == 200
            # /v1/models lists what a key may use: all of it for the master key and the glob.
            every = [m["id"] for m in (await admin.get("/v1/models")).json()["data"]]
            assert "mock/gpt-test" in every and len(every) > 1
            async with h.client(glob) as user:
                assert [m["id"] for m in (await user.get("/v1/models")).json()["data"]] == every
            async with h.client(only) as user:
                listed = (await user.get("/v1/models")).json()["data"]
                assert [m["id"] for m in listed] == ["mock/gpt-test"]
            bad = await admin.post(KEYS, json={"models": []})
            assert bad.status_code == 400

    run(main(), use_uvloop=True)


def test_revoke_reaches_another_worker_within_the_cache_ttl(db_url):
    """Two gateways on one database stand for two workers: the one that did not serve the revoke
    keeps the key for at most ``key_cache_ttl`` seconds."""
    ttl = 0.8

    async def main():
        async with (
            ledger_gateway(db_url, auth={"key_cache_ttl": ttl}) as a,
            ledger_gateway(db_url, auth={"key_cache_ttl": ttl}) as b,
            a.client() as admin_a,
        ):
            secret = (await admin_a.post(KEYS, json={})).json()["key"]
            key_id = (await admin_a.get(KEYS)).json()["data"][0]["id"]
            async with b.client(secret) as user_b:
                assert (
                    await user_b.post("/v1/chat/completions", json=chat(False))
                ).status_code == 200
                await admin_a.delete(KEYS, params={"id": key_id})
                revoked_at = asyncio.get_running_loop().time()
                while True:
                    r = await user_b.post("/v1/chat/completions", json=chat(False))
                    if r.status_code == 401:
                        break
                    assert r.status_code == 200
                    await asyncio.sleep(0.05)
                took = asyncio.get_running_loop().time() - revoked_at
                assert took <= ttl + 0.3

    run(main(), use_uvloop=True)


def test_key_lookups_are_cached(tmp_path):
    """One database lookup per key per TTL, however many requests."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"

    async def main():
        async with ledger_gateway(url, auth={"key_cache_ttl": 60}) as h, h.client() as admin:
            secret = (await admin.post(KEYS, json={})).json()["key"]
            store = h.store
            calls = 0
            real = store.key_by_hash

            async def counting(digest):
                nonlocal calls
                calls += 1
                return await real(digest)

            store.key_by_hash = counting
            async with h.client(secret) as user:
                results = await asyncio.gather(
                    *(user.post("/v1/chat/completions", json=chat(False)) for _ in range(20))
                )
            assert all(r.status_code == 200 for r in results)
            assert calls == 1

    run(main(), use_uvloop=True)


def test_database_down_known_key_keeps_working_unknown_gets_503(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"

    async def main():
        async with ledger_gateway(url, auth={"key_cache_ttl": 0}) as h, h.client() as admin:
            secret = (await admin.post(KEYS, json={})).json()["key"]
            async with h.client(secret) as user:
                assert (
                    await user.post("/v1/chat/completions", json=chat(False))
                ).status_code == 200

                async def down(digest):
                    raise sqlite3.OperationalError("database is locked")

                h.store.key_by_hash = down
                assert (
                    await user.post("/v1/chat/completions", json=chat(False))
                ).status_code == 200
            async with h.client("gwk_never_seen") as stranger:
                r = await stranger.post("/v1/chat/completions", json=chat(False))
                assert r.status_code == 503 and r.json()["error"]["code"] == "auth_unavailable"

    run(main(), use_uvloop=True)


def test_open_mode_warns_and_disables_admin(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"

    async def main():
        async with ledger_gateway(url, master_key=None) as h, h.client(None) as anon:
            assert (await stream_once(anon)).status_code == 200
            r = await anon.get("/admin/api/v1/usage/summary")
            assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"
            await h.ledger.flush()
            entries, _ = await h.store.log(UsageFilter(), 10, None)
            assert entries[0]["key_id"] is None

    with caplog.at_level(logging.WARNING, logger="gwcore.auth"):
        run(main(), use_uvloop=True)
    assert any("AUTHENTICATION IS OFF" in r.getMessage() for r in caplog.records)


def test_keys_need_the_ledger(tmp_path):
    async def main():
        store = open_store(LedgerSettings(url=f"sqlite:///{tmp_path / 'x.db'}"))
        auth = KeyAuth("m", None)
        with pytest.raises(GatewayError) as info:
            await auth.create_key("x")
        assert info.value.status == 503
        await store.close()

    run(main())
