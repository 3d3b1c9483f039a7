"""The idle culler's arbiter and its service definition (no hub: the portal is a stand-in)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from traitlets.config import Config

from hybridhub.hub.config import add_hybridhub
from hybridhub.hubapi import HubApiError, JsonApi
from hybridhub.services.idle_culler import CONFIG_FILE, IdleCulling, cull_arbiter
from hybridhub.web.utilisation import UTILISATION_SCOPE

LIMIT = 3600


class Portal(JsonApi):
    """The portal's idle verdicts, recorded calls."""

    def __init__(self, verdict: str | Exception):
        super().__init__("http://portal/services/hybridhub-portal", "culler-token")
        self.verdict = verdict
        self.calls: list[tuple[str, str]] = []

    async def call(self, method, path, body=None, **kwargs):
        self.calls.append((method, path))
        if isinstance(self.verdict, Exception):
            raise self.verdict
        return {"verdict": self.verdict, "utilisation": {}, "limit_minutes": 30}


@pytest.mark.parametrize(("verdict", "inactive", "culled"), [
    ("cull", 10, True),            # idle accelerators: stopped however active its kernels
    ("keep", 10 * LIMIT, False),   # busy accelerators: never stopped for idle kernels
    ("ordinary", LIMIT - 1, False),  # no accelerators / unknown: the culler's own rule
    ("ordinary", LIMIT, True),
    (HubApiError(599, "refused"), 10 * LIMIT, False),  # no answer: kept, never a guess
])
async def test_the_arbiter_decides_by_accelerator_use(verdict, inactive, culled):
    portal = Portal(verdict)
    server = {"name": "gpu 1", "full_name": "a b/gpu 1"}
    result = await cull_arbiter(inactive=timedelta(seconds=inactive), inactive_limit=LIMIT, server=server,
                                api=portal)
    assert result is culled
    assert portal.calls == [("POST", "/api/users/a%20b/idle-verdict?server=gpu%201")]


def _config(tmp_path, **culling) -> Config:
    c = Config()
    for key, value in culling.items():
        setattr(c.IdleCulling, key, value)
    add_hybridhub(c, db_url=f"sqlite:///{tmp_path / 'h.sqlite'}", freeze_gc=False)
    return c


def test_the_culler_is_opt_in_with_the_smallest_scopes(tmp_path, monkeypatch):
    monkeypatch.delenv("HYBRIDHUB_IDLE_CULLER", raising=False)
    off = _config(tmp_path).JupyterHub.services
    assert "idle-culler" not in [s["name"] for s in off]
    assert next(s for s in off if s["name"] == "hybridhub-portal")["environment"]["HYBRIDHUB_IDLE_CULLING"] == "0"
    c = _config(tmp_path, enabled=True, cull_every=5, timeout=600)
    (service,) = [s for s in c.JupyterHub.services if s["name"] == "idle-culler"]
    assert service["command"][1:] == ["-m", "jupyterhub_idle_culler", f"--config={CONFIG_FILE}",
                                      "--cull-every=5", "--timeout=600"]
    portal = next(s for s in c.JupyterHub.services if s["name"] == "hybridhub-portal")
    assert portal["environment"]["HYBRIDHUB_IDLE_CULLING"] == "1"  # the portal warns only then
    assert service["environment"]["HYBRIDHUB_PORTAL_API_URL"] == portal["url"] + "/services/hybridhub-portal"
    (role,) = [r for r in c.JupyterHub.load_roles if r["name"] == "idle-culler"]
    assert sorted(role["scopes"]) == sorted(["list:users", "read:users:activity", "read:servers",
                                             "delete:servers", UTILISATION_SCOPE])
    assert UTILISATION_SCOPE in c.JupyterHub.custom_scopes
    assert "cull_arbiter_hook = cull_arbiter" in CONFIG_FILE.read_text()


def test_the_environment_turns_it_on(monkeypatch):
    monkeypatch.setenv("HYBRIDHUB_IDLE_CULLER", "1")
    monkeypatch.setenv("HYBRIDHUB_IDLE_CULL_EVERY", "3")
    culling = IdleCulling()
    assert culling.enabled and culling.cull_every == 3 and culling.timeout == 3600
    assert all(t.help for t in IdleCulling.class_traits(config=True).values())
