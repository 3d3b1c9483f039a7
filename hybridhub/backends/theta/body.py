"""Every assumption about the fields inside Theta's ``body``, in one place (listed in docs/theta.md).

Theta's published client fixes the envelope and the create request, not what an answer's ``body``
holds.  What hybridhub reads from it, and what it calls things, is chosen here; confirm each against a
real project (docs/theta.md, "Assumptions") and change only this module if Theta differs:

* a listing is a JSON list, or an object holding it under the endpoint's name
  (``resources``, ``templates``, ``deployments``, ``events``) or ``items``;
* a GPU resource: ``id``, ``region`` (hosted), ``price_per_hour_usd``, ``available`` (free nodes);
* a deployment: ``id``, ``name``, ``display_name``, ``resource_id``, ``region``, ``status`` (one of :data:`RUNNING`,
  :data:`PENDING`, else ended), ``ssh_host``, ``ssh_port``, ``ssh_host_public_key`` (the node's
  OpenSSH host key, pinned by the backend), ``http_url`` (where the node's ``http_port`` is served);
* an event: ``reason`` and ``message``; the newest last;
* the balance: ``balance_usd``; usage: ``daily`` as ``{date, amount_usd}`` entries.

The create request is the client's (``deployment_template_id``, ``resource_id``, ...), built by
:func:`deployment_body`, which validates what Theta's tool schema validates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

#: Deployment states in which the node runs, and in which it is still coming up.
RUNNING = frozenset({"running"})
PENDING = frozenset({"pending", "creating", "starting", "provisioning"})

#: The create request's ``name`` (Theta's tool schema) and longest ``display_name``.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9]{1,20}$")
MAX_DISPLAY_NAME = 100


def items(body: Any, key: str) -> list[dict]:
    """The entries of a listing ``body``: a list, or the list under ``key`` or ``items``."""
    if isinstance(body, dict):
        body = body.get(key, body.get("items", []))
    return [e for e in body if isinstance(e, dict)] if isinstance(body, list) else []


@dataclass(frozen=True)
class Resource:
    """One GPU resource of ``gpu-resources``: its id, region, hourly price and free nodes."""

    id: str
    region: str | None
    price_per_hour_usd: float | None
    available: int | None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def resource(entry: dict) -> Resource:
    """A :class:`Resource` from one entry of ``gpu-resources`` (or the body of ``gpu-resources/{id}``)."""
    available = entry.get("available")
    return Resource(
        id=str(entry.get("id", "")),
        region=entry.get("region") or None,
        price_per_hour_usd=_number(entry.get("price_per_hour_usd")),
        available=int(available) if _number(available) is not None else None,
    )


def resources(body: Any) -> list[Resource]:
    """The resources of a ``gpu-resources`` answer."""
    return [resource(e) for e in items(body, "resources")]


def find_resource(found: list[Resource], resource_id: str, region: str | None) -> Resource | None:
    """The resource ``resource_id`` (in ``region``, when given) among ``found``."""
    return next((r for r in found if r.id == resource_id and (not region or r.region in (None, region))), None)


@dataclass(frozen=True)
class Deployment:
    """One GPU Node deployment, as hybridhub reads it."""

    id: str
    name: str
    display_name: str
    status: str
    resource_id: str
    region: str | None
    ssh_host: str | None
    ssh_port: int | None
    ssh_host_public_key: str | None
    http_url: str | None

    @property
    def running(self) -> bool:
        return self.status in RUNNING

    @property
    def pending(self) -> bool:
        return self.status in PENDING


def deployment(body: Any) -> Deployment:
    """A :class:`Deployment` from a deployment's ``body`` (get, create, or a listing's entry)."""
    if not isinstance(body, dict):
        raise ValueError("a deployment's body is not an object")
    port = body.get("ssh_port")
    return Deployment(
        id=str(body.get("id", "")),
        name=str(body.get("name") or ""),
        display_name=str(body.get("display_name") or ""),
        resource_id=str(body.get("resource_id") or ""),
        region=body.get("region") or None,
        status=str(body.get("status") or "").lower(),
        ssh_host=body.get("ssh_host") or None,
        ssh_port=int(port) if isinstance(port, int) and not isinstance(port, bool) else None,
        ssh_host_public_key=body.get("ssh_host_public_key") or None,
        http_url=body.get("http_url") or None,
    )


def deployments(body: Any) -> list[Deployment]:
    """The deployments of a ``gpu-deployments`` listing."""
    return [deployment(e) for e in items(body, "deployments")]


def last_event_reason(body: Any) -> str:
    """``reason: message`` of the newest event of a deployment's ``events`` (empty if none)."""
    events = items(body, "events")
    if not events:
        return ""
    last = events[-1]
    return ": ".join(str(last[k]) for k in ("reason", "message") if last.get(k))


def balance_usd(body: Any) -> float | None:
    """The project's credit balance in USD, from ``billing/balance``."""
    return _number(body.get("balance_usd")) if isinstance(body, dict) else None


def daily_usage(body: Any) -> dict[str, float]:
    """USD charged per ``YYYY-MM-DD`` day, from ``billing/usage`` (categories summed)."""
    days: dict[str, float] = {}
    for entry in items(body.get("daily", []) if isinstance(body, dict) else body, "daily"):
        amount = _number(entry.get("amount_usd"))
        if entry.get("date") and amount is not None:
            days[str(entry["date"])] = days.get(str(entry["date"]), 0.0) + amount
    return days


def deployment_body(*, template_id: str, resource_id: str, image: str, ssh_public_key: str, name: str,
                    display_name: str, region: str | None = None, ssh_port: int = 22,
                    http_port: int | None = None, max_price: float | None = None,
                    community: bool = True) -> dict:
    """The ``gpu-deployments`` create request, checked as Theta's tool schema checks it (ValueError)."""
    for key, value in (("deployment_template_id", template_id), ("resource_id", resource_id),
                       ("container_image", image), ("ssh_public_key", ssh_public_key)):
        if not value or not isinstance(value, str):
            raise ValueError(f"{key} is required")
    if not NAME_PATTERN.match(name):
        raise ValueError(f"name must match {NAME_PATTERN.pattern}")
    if len(display_name) > MAX_DISPLAY_NAME:
        raise ValueError(f"display_name is longer than {MAX_DISPLAY_NAME} characters")
    if not 1 <= ssh_port <= 65535 or (http_port is not None and not 0 <= http_port <= 65535):
        raise ValueError("ports must be within 1-65535 (http_port 0-65535)")
    if community and (max_price is None or max_price <= 0):
        raise ValueError("max_price_per_hour_usd (> 0) is required for a community GPU")
    body = {"name": name, "display_name": display_name, "deployment_template_id": template_id,
            "resource_id": resource_id, "container_image": image, "ssh_public_key": ssh_public_key,
            "ssh_port": ssh_port}
    optional = {"region": region, "http_port": http_port, "max_price_per_hour_usd": max_price}
    return body | {k: v for k, v in optional.items() if v is not None}
