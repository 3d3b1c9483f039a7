"""Make AWS agree with the hub: the EC2 orphan reconciler.

A hub that dies in the middle of a launch (or loses its database) can leave an
instance running that no server record points at, and a server record can
outlive its instance.  :class:`Ec2Reconciler` compares the instances tagged
with this hub's id with the hub's own view (the REST API, with the
``admin:server_state`` scope) and

* terminates instances the hub does not know (a launch still in flight, i.e. a
  server whose spawn is pending, is left alone; with ``shutdown_action='stop'``
  stopped instances are kept for reuse);
* stops, through the hub, servers whose instance is gone, so the hub and
  accounting close them;
* optionally closes accounting reservations of the EC2 classes that belong to
  no active server (the launch the dead hub was admitting).

It reads reservations first, then EC2, then the hub, so anything started after
a pass began is seen as in flight, never as an orphan.  It runs as a managed
JupyterHub service (``python -m hybridhub.services.ec2_reconcile``): once at start-up,
then every ``--interval`` seconds; :func:`reconciler_service` builds the
service and role entries for ``jupyterhub_config.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from hybridhub.hubapi import HubApi, HubApiError
from hybridhub.tags import TAG_HUB, TAG_SERVER, TAG_USER

log = logging.getLogger("hybridhub.ec2_reconcile")

#: Scopes the reconciler service needs: see servers with their state, stop them.
SERVICE_SCOPES = ["list:users", "read:users:name", "read:servers", "admin:server_state", "servers"]
#: Environment passed from the hub to the service so boto3's standard chain works there too.
AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_EC2",
    "AWS_CA_BUNDLE",
    "HOME",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)
LIVE_STATES = ["pending", "running", "stopping", "stopped"]


@dataclass(frozen=True)
class HubServer:
    """One server as the hub sees it."""

    user: str
    server: str
    instance_id: str | None
    region: str | None
    pending: str | None
    ready: bool


@dataclass
class Report:
    """What one reconciliation pass did."""

    terminated: list[str] = field(default_factory=list)
    kept_in_flight: list[str] = field(default_factory=list)
    stopped_servers: list[tuple[str, str]] = field(default_factory=list)
    released: list[int] = field(default_factory=list)


class HubState(Protocol):
    """The hub's view of its servers, and a way to stop one."""

    async def servers(self) -> list[HubServer]: ...

    async def stop_server(self, user: str, server: str) -> None: ...


def server_from_model(user: str, name: str, model: dict) -> HubServer:
    """A :class:`HubServer` from a REST server model (HybridSpawner or plain Ec2Backend state)."""
    state = model.get("state") or {}
    backend = state.get("backend_state") or state
    return HubServer(
        user=user,
        server=name,
        instance_id=backend.get("instance_id"),
        region=backend.get("region"),
        pending=model.get("pending"),
        ready=bool(model.get("ready")),
    )


class HubApiState:
    """:class:`HubState` through the hub's REST API (a service token with SERVICE_SCOPES)."""

    def __init__(self, hub: HubApi, *, page_size: int = 200):
        self.hub = hub
        self.page_size = page_size

    async def servers(self) -> list[HubServer]:
        """Every active server (ready or pending) with its state."""
        return [
            server_from_model(user["name"], name, model)
            for user in await self.hub.active_users(self.page_size)
            for name, model in (user.get("servers") or {}).items()
        ]

    async def stop_server(self, user: str, server: str) -> None:
        """Ask the hub to stop the server (it then polls, stops and releases it)."""
        if not await self.hub.stop_server(user, server):
            raise HubApiError(500, f"the hub did not stop {user}'s server {server!r}")


class Ec2Reconciler:
    """Terminate this hub's unknown instances; close hub entries whose instance is gone."""

    def __init__(
        self,
        *,
        hub_id: str,
        hub_state: HubState,
        region: str = "us-east-1",
        endpoint_url: str = "",
        shutdown_action: str = "terminate",
        accounting=None,
        resource_classes: Iterable[str] = (),
    ):
        self.hub_id = hub_id
        self.hub_state = hub_state
        self.region = region
        self.shutdown_action = shutdown_action
        self.accounting = accounting
        self.resource_classes = set(resource_classes)
        self.ec2 = boto3.session.Session().client(
            "ec2",
            region_name=region,
            endpoint_url=endpoint_url or None,
            config=BotoConfig(retries={"total_max_attempts": 3, "mode": "standard"}),
        )
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="hybridhub-reconcile")

    async def _call(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(fn, *args, **kwargs)
        )

    async def hub_instances(self) -> list[dict]:
        """This hub's instances that are not terminated."""
        pages = self.ec2.get_paginator("describe_instances").paginate(
            Filters=[
                {"Name": f"tag:{TAG_HUB}", "Values": [self.hub_id]},
                {"Name": "instance-state-name", "Values": LIVE_STATES},
            ]
        )
        result = await self._call(
            lambda: [i for p in pages for r in p["Reservations"] for i in r["Instances"]]
        )
        return result

    async def reconcile_once(self) -> Report:
        """One pass: reservations, then EC2, then the hub (see the module docstring)."""
        report = Report()
        reservations = []
        if self.accounting is not None:
            reservations = [
                r
                for r in await self._call(self.accounting.open_reservations)
                if not self.resource_classes or r.resource_class in self.resource_classes
            ]
        instances = await self.hub_instances()
        servers = await self.hub_state.servers()
        await self._terminate_orphans(instances, servers, report)
        await self._stop_servers_without_instance(instances, servers, report)
        active = {(s.user, s.server) for s in servers}
        for r in reservations:
            if (r.username, r.server_name) not in active:
                log.warning("Closing reservation %s of %s/%s: no such server on the hub",
                            r.id, r.username, r.server_name)
                await self._call(self.accounting.release, r.id, "reconciled: no server")
                report.released.append(r.id)
        return report

    async def _terminate_orphans(self, instances: list[dict], servers: list, report: Report) -> None:
        """Terminate this hub's instances that no server of the hub knows (unless one is starting)."""
        known = {s.instance_id for s in servers if s.instance_id}
        in_flight = {(s.user, s.server) for s in servers if s.pending == "spawn"}
        orphans = []
        for inst in instances:
            iid = inst["InstanceId"]
            tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
            if iid in known:
                continue
            if (tags.get(TAG_USER, ""), tags.get(TAG_SERVER, "")) in in_flight:
                report.kept_in_flight.append(iid)
                continue
            if inst["State"]["Name"] == "stopped" and self.shutdown_action == "stop":
                continue  # kept for the user's next launch
            orphans.append(iid)
        if orphans:
            log.warning("Terminating %d instance(s) of hub %s unknown to the hub: %s",
                        len(orphans), self.hub_id, ", ".join(orphans))
            await self._call(self.ec2.terminate_instances, InstanceIds=orphans)
            report.terminated = orphans

    async def _stop_servers_without_instance(self, instances: list[dict], servers: list, report: Report) -> None:
        """Stop the hub's servers (in this region) whose instance is gone."""
        existing = {i["InstanceId"] for i in instances}
        for s in servers:
            if (s.instance_id and s.pending is None and s.instance_id not in existing
                    and (s.region or self.region) == self.region):
                log.warning("Server %s/%s: instance %s is gone; stopping the server", s.user, s.server, s.instance_id)
                await self.hub_state.stop_server(s.user, s.server)
                report.stopped_servers.append((s.user, s.server))

    async def run(self, interval: float, *, stop_when_orphaned: bool = True) -> None:
        """Reconcile now and every ``interval`` seconds (until the parent hub goes away)."""
        parent = os.getppid()
        while True:
            try:
                report = await self.reconcile_once()
                if report.terminated or report.stopped_servers or report.released:
                    log.info("Reconciled: %s", report)
            except (ClientError, BotoCoreError, HubApiError, OSError) as e:
                log.error("Reconciliation pass failed: %s", e)
            await asyncio.sleep(interval)
            if stop_when_orphaned and os.getppid() != parent:
                log.info("The hub that started this service is gone; exiting")
                return


def reconciler_service(
    *,
    hub_id: str,
    region: str,
    endpoint_url: str = "",
    interval: float = 300,
    shutdown_action: str = "terminate",
    db_url: str = "",
    resource_classes: Iterable[str] = (),
    name: str = "ec2-reconciler",
) -> tuple[dict, dict]:
    """The managed service and its role for ``c.JupyterHub.services`` / ``load_roles``."""
    command = [
        sys.executable,
        "-m",
        "hybridhub.services.ec2_reconcile",
        "--hub-id",
        hub_id,
        "--region",
        region,
        "--interval",
        str(interval),
        "--shutdown-action",
        shutdown_action,
    ]
    if endpoint_url:
        command += ["--endpoint-url", endpoint_url]
    if db_url:
        command += ["--db-url", db_url]
    for rc in resource_classes:
        command += ["--resource-class", rc]
    env = {k: os.environ[k] for k in AWS_ENV if k in os.environ}
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    service = {"name": name, "command": command, "environment": env}
    role = {"name": name, "services": [name], "scopes": list(SERVICE_SCOPES)}
    return service, role


def main(argv: list[str] | None = None) -> None:
    """Entry point of the managed service."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hub-id", required=True, help="Ec2Backend.hub_id of the hub")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--endpoint-url", default="", help="EC2 endpoint (tests, VPC endpoints)")
    p.add_argument("--interval", type=float, default=300, help="seconds between passes")
    p.add_argument("--shutdown-action", choices=["terminate", "stop"], default="terminate")
    p.add_argument("--db-url", default="", help="accounting database: close orphaned reservations")
    p.add_argument(
        "--resource-class",
        action="append",
        default=[],
        help="only reservations of these classes (repeatable; default: all)",
    )
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="[%(levelname)s %(asctime)s ec2-reconciler] %(message)s"
    )
    api_url = os.environ["JUPYTERHUB_API_URL"]
    token = os.environ["JUPYTERHUB_API_TOKEN"]
    accounting = None
    if args.db_url:
        from hybridhub.accounting.db import Database
        from hybridhub.accounting.settings import MeterSettings

        accounting = MeterSettings.from_env(os.environ).accounting(Database(args.db_url))
    reconciler = Ec2Reconciler(
        hub_id=args.hub_id,
        hub_state=HubApiState(HubApi(api_url, token)),
        region=args.region,
        endpoint_url=args.endpoint_url,
        shutdown_action=args.shutdown_action,
        accounting=accounting,
        resource_classes=args.resource_class,
    )
    if args.once:
        report = asyncio.run(reconciler.reconcile_once())
        print(json.dumps(report.__dict__))
        return
    asyncio.run(reconciler.run(args.interval))


if __name__ == "__main__":
    main()
