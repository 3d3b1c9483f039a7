"""hybridhub.metrics without a hub: names, bounded labels, the scope check of the services' /metrics."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from hybridhub import metrics
from hybridhub.errors import REFUSAL_REASONS, SpawnRefusal, as_refusal, no_capacity_error, user_error

ALLOWED_LABELS = {"class", "offering", "backend", "reason", "outcome", "group", "le"}


def families(registry) -> list:
    return [m for m in registry.collect() if m.name.startswith("hybridhub_")]


def test_every_metric_is_hybridhub_named_with_bounded_labels():
    hub, services = families(REGISTRY), families(metrics.SERVICE_REGISTRY)
    assert {m.name for m in hub} >= {"hybridhub_admissions", "hybridhub_refusals", "hybridhub_running_servers",
                                     "hybridhub_running_accelerators", "hybridhub_spawn_duration_seconds",
                                     "hybridhub_picker_render_seconds"}
    assert {m.name for m in services} >= {"hybridhub_meter_tick_seconds", "hybridhub_accelerator_hours",
                                          "hybridhub_money_charged", "hybridhub_stops_at_zero",
                                          "hybridhub_mails_sent", "hybridhub_meter_last_tick_timestamp_seconds",
                                          "hybridhub_idle_culls"}
    for collector in (metrics.ADMISSIONS, metrics.REFUSALS, metrics.SPAWN_DURATION, metrics.RUNNING_SERVERS,
                      metrics.RUNNING_ACCELERATORS, metrics.ACCELERATOR_HOURS, metrics.MONEY_CHARGED,
                      metrics.STOPS_AT_ZERO, metrics.IDLE_CULLS):
        assert set(collector._labelnames) <= ALLOWED_LABELS, collector


def test_refusals_are_spawn_exceptions_with_reason_status_and_text():
    err = no_capacity_error("No capacity for 2 x H100: 100% taken")
    assert isinstance(err, SpawnRefusal) and (err.status_code, err.reason) == (429, "capacity")
    assert err.headers == {"Retry-After": "60"} and err.jupyterhub_message.endswith("100% taken")
    assert err.log_message % err.args == err.message  # tornado's log line survives a "%"
    price = as_refusal(user_error(409, "Theta quotes $0.29/h"))
    assert (price.status_code, price.reason, price.jupyterhub_message) == (409, "price", "Theta quotes $0.29/h")
    assert {"budget", "capacity", "course", "group", "options", "trust", "price"} <= set(REFUSAL_REASONS)


class FakeAuth:
    def __init__(self, scopes_by_token: dict[str, list[str]]):
        self.scopes_by_token, self.calls = scopes_by_token, 0

    async def user_for_token(self, token, use_cache=True, sync=True):
        self.calls += 1
        scopes = self.scopes_by_token.get(token)
        return None if scopes is None else {"name": "scraper", "scopes": scopes}


def test_scope_check_needs_read_metrics_and_remembers_answers_for_a_while():
    now = [0.0]
    auth = FakeAuth({"good": ["read:metrics"], "weak": ["read:users"]})
    check = metrics.ScopeCheck(auth, ttl=60, clock=lambda: now[0])

    async def run(token: str) -> bool:
        return await check.allows(token)

    assert asyncio.run(run("good")) and not asyncio.run(run("weak")) and not asyncio.run(run("nope"))
    assert asyncio.run(run("good")) and auth.calls == 3
    now[0] = 61.0
    assert asyncio.run(run("good")) and auth.calls == 4
    assert metrics.bearer_token("Bearer abc") == "abc" and metrics.bearer_token("token abc") == "abc"
    assert metrics.bearer_token("Basic abc") == ""
