"""Hub-wide configuration shared by ``jupyterhub_config.py`` and the tests.

:func:`configure_hub` sets the spawner, database, templates, demo users and
groups, and the portal's managed services on a JupyterHub config object.  It
validates the catalog first, so a bad catalog stops the hub at start-up with
the offending key named.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jupyterhub.utils import random_port
from traitlets.config import Config

from hybridhub import loghygiene
from hybridhub.accounting.settings import MeterSettings
from hybridhub.backends import backend_class, check_catalog
from hybridhub.catalog import Catalog, CatalogError, load_catalog
from hybridhub.services.idle_culler import IdleCulling
from hybridhub.spawner.pagevars import PageVar
from hybridhub.spawner.picker import templates_dir

log = logging.getLogger("hybridhub")

#: Demo users (password below), their groups and the group kinds.
DEMO_GROUPS = {
    "course-ml101": {
        "users": ["alice", "bob", "ivy"],
        "properties": {"kind": "course", "instructors": ["ivy"]},  # no session server for ivy
    },
    "lab-vision": {"users": ["carol", "dave"], "properties": {"kind": "lab"}},
    "project-llm": {"users": ["dave"], "properties": {"kind": "project"}},
}
DEMO_ADMINS = {"admin"}
#: Threshold mail settings passed on to the meter service (hybridhub.accounting.mail; off without a host).
MAIL_SETTINGS = ("HYBRIDHUB_SMTP_HOST", "HYBRIDHUB_SMTP_PORT", "HYBRIDHUB_MAIL_FROM",
                 "HYBRIDHUB_LEADER_ADDRESSES", "HYBRIDHUB_PORTAL_URL")
#: Demo group leaders (portal scope ``custom:quota:lead!group=<group>``): carol leads her
#: lab, ivy (an instructor, also a member) leads course-ml101.
DEMO_LEADERS = {"lab-vision": ["carol"], "course-ml101": ["ivy"]}
#: Demo instructors (``custom:courses:manage!group=<course>``): they run course sessions.
DEMO_INSTRUCTORS = {"course-ml101": ["ivy"]}
#: Demo-only passwords, documented in README.md.  Never use them in production.
DEMO_USER_PASSWORD = "hybridhub-demo"
DEMO_ADMIN_PASSWORD = "hybridhub-demo-admin-password-2026"
#: Demo budgets per group kind: accelerator-hours per class and month.
DEMO_BUDGETS = {
    "course": {"community": 40.0, "enterprise": 10.0, "aws": 10.0},
    "lab": {"community": 200.0, "enterprise": 100.0, "aws": 50.0},
    "project": {"community": 50.0, "enterprise": 50.0, "aws": 20.0},
}


#: Named servers a demo user may have at a time (:func:`named_server_limit`).
DEMO_NAMED_SERVER_LIMIT = 3


#: The demo's simulated hardware (offering -> {host: devices}): "Free now" is real, a launch holds its
#: devices until stop, and one beyond them gets 429 with Retry-After.  HYBRIDHUB_DEMO_INVENTORY=0 turns it off.
DEMO_INVENTORY = {
    "community/rtx3090": {"volunteer-ana": 2, "volunteer-ben": 2},
    "community/rtx4090": {"volunteer-chen": 2, "volunteer-dara": 2},
    "community/rtx5090": {"volunteer-eli": 2},
    "enterprise/a100": {"dgx-a100-01": 8},
    "enterprise/h100": {"dgx-h100-01": 8, "dgx-h100-02": 8},
    "enterprise/h200": {"hgx-h200-01": 8},
    "aws/trn1.2xlarge": {"us-east-1a": 4},
    "aws/trn1.32xlarge": {"us-east-1a": 1},
    "aws/inf2.xlarge": {"us-east-1b": 4},
    "aws/inf2.8xlarge": {"us-east-1b": 2},
}


def default_db_url(data_dir: Path) -> str:
    """The embedded SQLite database inside ``data_dir``."""
    return f"sqlite:///{data_dir / 'hybridhub.sqlite'}"


def seed_demo_budgets(db_url: str) -> None:
    """Create the demo groups and their monthly budgets (idempotent)."""
    from hybridhub.spawner.hybrid import accounting_for

    acct = accounting_for(db_url)
    acct.sync_groups(
        {name: g["users"] for name, g in DEMO_GROUPS.items()},
        kinds={name: g["properties"]["kind"] for name, g in DEMO_GROUPS.items()},
    )
    for name, g in DEMO_GROUPS.items():
        for resource_class, hours in DEMO_BUDGETS[g["properties"]["kind"]].items():
            acct.ensure_budget(name, resource_class, hours, unit="hours", period="monthly")


def configure_services(
    c: Config,
    *,
    db_url: str,
    settings: MeterSettings,
    portal_bind_url: str = "",
    quota_admins: Iterable[str] = (),
    quota_leaders: Mapping[str, Iterable[str]] | None = None,
) -> None:
    """Register hybridhub's managed services with the smallest scopes they need.

    The portal (:mod:`hybridhub.web.app`) listens on ``portal_bind_url`` (default: a free
    loopback port) behind the hub's proxy at ``/services/hybridhub-portal/``, linked from
    the hub's navigation bar; ``quota_admins`` get ``custom:quota:admin`` and each group's
    ``quota_leaders`` get ``custom:quota:lead!group=<group>``.
    """
    configure_portal(
        c, db_url=db_url, bind_url=portal_bind_url, admins=quota_admins,
        leaders=quota_leaders or {},
    )
    c.JupyterHub.services = [
        *[s for s in c.JupyterHub.get("services", []) if s.get("name") != "hybridhub-meter"],
        {
            "name": "hybridhub-meter",
            "url": f"http://127.0.0.1:{random_port()}",  # its /metrics, also at /services/hybridhub-meter/metrics
            "command": [sys.executable, "-m", "hybridhub.services.meter"],
            "environment": {
                "HYBRIDHUB_DB_URL": db_url,
                **settings.env(),
                **{k: v for k, v in os.environ.items() if k in MAIL_SETTINGS},
            },
        },
    ]
    c.JupyterHub.load_roles = [
        *[r for r in c.JupyterHub.get("load_roles", []) if r.get("name") != "hybridhub-meter"],
        {"name": "hybridhub-meter", "services": ["hybridhub-meter"], "scopes": ["delete:servers", "list:users"]},
    ]


def configure_portal(
    c: Config, *, db_url: str, bind_url: str, admins: Iterable[str],
    leaders: Mapping[str, Iterable[str]],
) -> None:
    """Run the quota portal as a managed service, with its custom scopes and roles."""
    from hybridhub.web import app as service

    bind_url = bind_url or f"http://127.0.0.1:{random_port()}"
    c.JupyterHub.custom_scopes = {**c.JupyterHub.get("custom_scopes", {}), **service.CUSTOM_SCOPES}
    c.JupyterHub.services = [
        *[s for s in c.JupyterHub.get("services", []) if s.get("name") != service.SERVICE_NAME],
        service.service_definition(db_url=db_url, bind_url=bind_url),
    ]
    roles = c.JupyterHub.get("load_roles", [])
    user_role = next((r for r in roles if r.get("name") == "user"), None)
    new = [*service.hub_roles(admins=admins, leaders=dict(leaders), user_role=user_role),
           {"name": f"{service.SERVICE_NAME}-groups", "services": [service.SERVICE_NAME], "scopes": ["read:groups"],
            "description": "Read the hub's groups (a budget set for a group no member has launched in yet)"}]
    names = {r["name"] for r in new}
    c.JupyterHub.load_roles = [*[r for r in roles if r.get("name") not in names], *new]
    base_url = c.JupyterHub.get("base_url", "/").rstrip("/")
    c.JupyterHub.template_vars = {
        **c.JupyterHub.get("template_vars", {}),
        "hybridhub_portal_url": f"{base_url}/services/{service.SERVICE_NAME}/",
    }


def configure_courses(
    c: Config, *, db_url: str, catalog_file: str, backend_override: str,
    instructors: Mapping[str, Iterable[str]], env: Mapping[str, str],
) -> None:
    """Course sessions: the scheduler service, instructor roles, home-page vars and banners."""
    from hybridhub.accounting import courses
    from hybridhub.services.course_scheduler import course_service
    from hybridhub.spawner.hybrid import accounting_for

    service, role = course_service(
        db_url, catalog_file=catalog_file, backend_override=backend_override,
        concurrency=int(env.get("HYBRIDHUB_COURSE_CONCURRENCY", "5")),
        interval=float(env.get("HYBRIDHUB_COURSE_INTERVAL", "1")),
    )
    managed = env.get("HYBRIDHUB_COURSE_SCHEDULER", "1") != "0"  # 0: it runs elsewhere
    c.JupyterHub.services = [
        *[s for s in c.JupyterHub.get("services", []) if s.get("name") != service["name"]],
        *([service] if managed else []),
    ]
    for portal in c.JupyterHub.services:  # the portal validates offerings against the catalog
        if portal.get("name") == "hybridhub-portal":
            portal.setdefault("environment", {})["HYBRIDHUB_CATALOG"] = catalog_file
    c.JupyterHub.load_roles = [
        *[r for r in c.JupyterHub.get("load_roles", []) if r.get("name") != role["name"]],
        *([role] if managed else []),
        *[{"name": f"hybridhub-instructor-{group}", "users": sorted(users),
           "description": f"Run {group}'s course sessions",
           "scopes": [f"{courses.MANAGE_SCOPE}!group={group}"]}
          for group, users in sorted(instructors.items())],
    ]
    db = accounting_for(db_url).db
    template_vars = dict(c.JupyterHub.get("template_vars", {}))
    earlier = getattr(template_vars.get("hybridhub_banners"), "read", None)  # add_hybridhub's
    template_vars["hybridhub_banners"] = PageVar("hybridhub_banners", lambda name, groups: [
        *(earlier(name, groups) if earlier else []), *courses.course_banners(db, name),
    ], db.reading)
    template_vars["hybridhub_course_sessions"] = PageVar(
        "hybridhub_course_sessions", lambda name, groups: courses.sessions_for_user(db, name, groups),
        db.reading,
    )
    c.JupyterHub.template_vars = template_vars


def configure_production(c: Config, *, env: Mapping[str, str]) -> None:
    """Real backends: GPU hosts from an inventory file, AWS from HYBRIDHUB_AWS_* (docs/docker.md, docs/aws.md).
    Orphans are cleaned up by the hub's reconciliation runner (:mod:`hybridhub.spawner.reconcile`)."""
    c.Spawner.start_timeout = 900  # an EC2 instance boots, installs and answers within this
    if env.get("HYBRIDHUB_DOCKER_HOSTS"):
        c.GpuInventory.hosts_file = env["HYBRIDHUB_DOCKER_HOSTS"]
    region = env.get("HYBRIDHUB_AWS_REGION", "us-east-1")
    c.Ec2Backend.region = region
    for var, trait in (("HYBRIDHUB_AWS_SUBNET", "subnet_ids"), ("HYBRIDHUB_AWS_SECURITY_GROUP", "security_group_ids")):
        if env.get(var):
            setattr(c.Ec2Backend, trait, env[var].split(","))
    for var, trait in (
        ("HYBRIDHUB_AWS_INSTANCE_PROFILE", "instance_profile"),
        ("HYBRIDHUB_HOME_S3_URI", "home_s3_uri"),
    ):
        if env.get(var):
            setattr(c.Ec2Backend, trait, env[var])
    hub_id = env.get("HYBRIDHUB_HUB_ID", "hybridhub")
    c.Ec2Backend.hub_id = hub_id


def add_hybridhub(
    c: Config,
    *,
    db_url: str,
    catalog_file: str = "",
    meter_interval: float | None = None,
    grace_seconds: float | None = None,
    portal_bind_url: str = "",
    quota_admins: Iterable[str] = (),
    quota_leaders: Mapping[str, Iterable[str]] | None = None,
    instructors: Mapping[str, Iterable[str]] | None = None,
    freeze_gc: bool = True,
    switch_interval: float | None = None,
) -> None:
    """Add hybridhub to an existing hub's config ``c``: spawner, templates, database and services.

    This is the one call a site config needs (README, "Use it in your own JupyterHub"); the
    templates, migrations and services are found in the installed package.  It validates the
    catalog and upgrades the accounting schema now, so a bad catalog or database stops the hub.
    ``meter_interval`` and ``grace_seconds`` (else ``HYBRIDHUB_METER_INTERVAL`` /
    ``HYBRIDHUB_GRACE_SECONDS``, else 60 and 300) are resolved here once and used by the hub and
    every service alike (:mod:`hybridhub.accounting.settings`).
    With ``freeze_gc`` it ends with :func:`freeze_startup_objects`, and it sets the process's GIL switch
    interval to ``switch_interval`` (None: :data:`GIL_SWITCH_SECONDS`; 0 leaves Python's) with
    :func:`quicken_thread_handoffs`.
    """
    loghygiene.install()  # no cookie, token or Authorization value in the hub's log; user errors in one line
    from hybridhub.spawner import stop_requester

    stop_requester.install()  # session records say who asked for a stop (an admin, the idle culler)
    settings = meter_settings(meter_interval, grace_seconds)
    catalog = configure_spawner(c, db_url=db_url, catalog_file=catalog_file, settings=settings)
    configure_home_page(c, db_url=db_url, settings=settings, catalog=catalog)
    configure_services(
        c, db_url=db_url, settings=settings, portal_bind_url=portal_bind_url, quota_admins=quota_admins,
        quota_leaders=quota_leaders or {},
    )
    configure_urls(c)
    configure_courses(
        c, db_url=db_url, catalog_file=catalog_file, backend_override=c.HybridSpawner.get("backend_override", ""),
        instructors=instructors or {}, env=os.environ,
    )
    configure_idle_culling(c, IdleCulling(config=c))
    hand_settings_to_services(c, settings)
    from hybridhub.spawner.reconcile import start_in_hub

    start_in_hub()  # the reconciliation runner, once the hub runs (nothing outside a starting hub)
    from hybridhub.spawner.provider_bills import start_in_hub as record_provider_bills

    record_provider_bills()  # providers' bills and balances (Theta), for the portal's reconciliation
    if freeze_gc:
        freeze_startup_objects()
    quicken_thread_handoffs(GIL_SWITCH_SECONDS if switch_interval is None else switch_interval)


def configure_idle_culling(c: Config, culling: IdleCulling) -> None:
    """Hand the idle rule's settings (``HYBRIDHUB_IDLE_*``) to the portal and, when ``culling`` is
    enabled, run jupyterhub-idle-culler with hybridhub's arbiter (:mod:`hybridhub.services.idle_culler`)."""
    from hybridhub.accounting.utilisation import IdleSettings
    from hybridhub.services.idle_culler import SERVICE_NAME, culler_service
    from hybridhub.web.app import SERVICE_NAME as PORTAL
    from hybridhub.web.utilisation import UTILISATION_SCOPE

    try:
        idle = IdleSettings.from_env(os.environ)
    except ValueError as e:
        sys.exit(f"hybridhub: {e}")
    portal = next(s for s in c.JupyterHub.services if s.get("name") == PORTAL)
    portal.setdefault("environment", {}).update(idle.env(), HYBRIDHUB_IDLE_CULLING="1" if culling.enabled else "0")
    services = [s for s in c.JupyterHub.services if s.get("name") != SERVICE_NAME]
    roles = [r for r in c.JupyterHub.get("load_roles", []) if r.get("name") != SERVICE_NAME]
    if culling.enabled:
        base_url = c.JupyterHub.get("base_url", "/").rstrip("/")
        try:
            service, role = culler_service(
                culling, portal_api_url=f"{portal['url'].rstrip('/')}{base_url}/services/{PORTAL}",
                scope=UTILISATION_SCOPE, environment=idle.env())
        except ValueError as e:
            sys.exit(f"hybridhub: {e}")
        services.append(service)
        roles.append(role)
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles


def configure_spawner(c: Config, *, db_url: str, catalog_file: str, settings: MeterSettings) -> Catalog:
    """HybridSpawner with its database, catalog, metering settings and templates; returns the catalog,
    validated now (each offering by its backend), so a bad one stops the hub with the key named."""
    c.JupyterHub.spawner_class = "hybrid"
    from hybridhub.spawner.move import HANDLERS as move_handlers  # /hub/hybridhub/move/<user>/<server>

    c.JupyterHub.extra_handlers = [*[h for h in c.JupyterHub.get("extra_handlers", []) if h not in move_handlers],
                                   *move_handlers]
    c.HybridSpawner.db_url = db_url
    c.HybridSpawner.catalog_file = catalog_file
    c.HybridSpawner.meter_interval = settings.interval
    c.HybridSpawner.grace_seconds = settings.grace_seconds
    c.JupyterHub.template_paths = [
        str(templates_dir()), *[p for p in c.JupyterHub.get("template_paths", []) if p != str(templates_dir())],
    ]
    override = c.HybridSpawner.get("backend_override", "") or None
    classes = c.HybridSpawner.get("backend_classes", {})
    try:
        catalog = check_catalog(load_catalog(path=catalog_file or None, backend_override=override), classes)
    except CatalogError as e:
        sys.exit(f"hybridhub: invalid resource catalog: {e}")
    when_hub_runs(c, lambda config: log_shared_machines(config, catalog, classes))
    return catalog


def log_shared_machines(config: Config, catalog: Catalog, classes: Mapping[str, object]) -> None:
    """Say at start-up which backends put every user's server under one Unix account."""
    backends = {o.backend for o in catalog.all_offerings()}
    shared = sorted(b for b in backends if backend_class(b, classes).shares_machine(config))
    if shared:
        log.warning("hybridhub: the %s backend runs every user's server as this hub's own Unix user: users can "
                    "read each other's files there (the picker says so)", ", ".join(shared))


def when_hub_runs(c: Config, callback: Callable[[Config], None]) -> None:
    """``callback(config)`` once the JupyterHub app loading ``c`` has started, with its whole config (a
    site's lines after ``add_hybridhub`` included); outside a starting hub, at once with ``c``."""
    from hybridhub.spawner.hub_start import after_hub_starts

    async def run(app) -> None:
        callback(app.config)

    if after_hub_starts(run) is None:
        callback(c)


def configure_home_page(c: Config, *, db_url: str, settings: MeterSettings, catalog: Catalog) -> None:
    """The hub pages' variables (banners, running servers), read off the hub's loop; upgrades the schema now."""
    from hybridhub.spawner.home import running_servers
    from hybridhub.spawner.hybrid import accounting_for

    reading = accounting_for(db_url, settings).db.reading  # upgrades the schema now; refuses a newer one
    c.JupyterHub.template_vars = {  # read in a worker thread, off the hub's loop (hybridhub.spawner.pagevars)
        **c.JupyterHub.get("template_vars", {}),
        "hybridhub_banners": PageVar(
            "hybridhub_banners", lambda name, groups: accounting_for(db_url, settings).banners_for(name), reading),
        "hybridhub_running": PageVar(
            "hybridhub_running",
            lambda name, groups: running_servers(accounting_for(db_url, settings), catalog, name),
            reading),
    }


def configure_urls(c: Config) -> None:
    """The URLs servers and the verifier reach the hub's proxy at, read when a process starts (JupyterHub
    calls these with its spawner) after the whole config file ran: a site may set bind_url later."""
    c.Spawner.environment = {  # where a server's Lab extension reads its session (docs/lab.md)
        **c.Spawner.get("environment", {}),
        "HYBRIDHUB_PORTAL_URL": lambda spawner: os.environ.get("HYBRIDHUB_PORTAL_URL")
        or f"{hub_public_url(c)}/services/hybridhub-portal/",
    }
    from hybridhub.services.verification import configure_verification

    configure_verification(c, proxy_url=lambda spawner: hub_public_url(c))


def hub_public_url(c: Config) -> str:
    """The hub's proxy as servers and services on this machine reach it, from ``c.JupyterHub.bind_url``
    (JupyterHub's default ``http://:8000`` when unset; an all-interfaces address is reached on loopback)."""
    url = urlsplit(c.JupyterHub.get("bind_url") or "http://:8000")
    host = url.hostname if url.hostname not in (None, "", "0.0.0.0", "::") else "127.0.0.1"
    netloc = f"[{host}]" if ":" in host else host
    return f"{url.scheme or 'http'}://{netloc}:{url.port or 8000}{url.path.rstrip('/')}"


def meter_settings(meter_interval: float | None = None, grace_seconds: float | None = None) -> MeterSettings:
    """The metering settings: the arguments, else this process's environment, else the defaults."""
    try:
        env = MeterSettings.from_env(os.environ)
        return MeterSettings(env.interval if meter_interval is None else meter_interval,
                             env.grace_seconds if grace_seconds is None else grace_seconds)
    except ValueError as e:
        sys.exit(f"hybridhub: {e}")


def hand_settings_to_services(c: Config, settings: MeterSettings) -> None:
    """Give every hybridhub service the hub's metering settings (the same environment variables)."""
    for service in c.JupyterHub.get("services", []):
        if str(service.get("name", "")).startswith("hybridhub-") and "command" in service:
            service["environment"] = {**service.get("environment", {}), **settings.env()}


def freeze_startup_objects() -> None:
    """Leave what the hub process holds by now (imported modules, classes, config: about 300,000
    objects) out of every later garbage collection (:func:`gc.freeze`).

    A full collection walks every tracked object while the hub's loop waits: 130 ms on a
    2-core machine, in the middle of a lecture hall's logins; with these frozen, 16 ms
    (docs/performance.md).  They live as long as the process anyway.
    """
    gc.collect()  # what is already garbage is freed, not frozen
    gc.freeze()


#: The hub process's GIL switch interval (:func:`quicken_thread_handoffs`); Python's default is 5 ms.
GIL_SWITCH_SECONDS = 0.001


def quicken_thread_handoffs(seconds: float) -> None:
    """Let a worker thread take the GIL back from the hub's loop within ``seconds`` (0: leave Python's).

    Every accounting read runs in a worker thread (docs/performance.md, "The hub's loop"), and each
    database call there releases the GIL and must take it back.  While the loop serves other users,
    Python's default switch interval lets each of those waits last up to 5 ms (the convoy effect of
    CPython's GIL): a picker's six statements queued behind a lecture hall's logins.
    """
    if seconds:
        sys.setswitchinterval(seconds)


def keep_state_private(data_dir: Path) -> None:
    """The hub's folder: passable (users' homes are below it) but not listable, its files (databases,
    cookie secret, pid files) readable by the hub's account only, now and when created later."""
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o711)
    for path in data_dir.iterdir():
        if path.is_file() and not path.is_symlink():
            path.chmod(path.stat().st_mode & 0o700)
    os.umask(0o077)


def share_if_unreachable(c: Config, data_dir: Path) -> None:
    """A root hub whose checkout other accounts cannot reach (a clone under /root) runs its local servers as
    itself, saying so, rather than refusing every launch; clone under /opt to keep users apart."""
    from hybridhub.backends.local.accounts import python_unreachable, unreachable

    blocked = os.geteuid() == 0 and (unreachable(data_dir) or python_unreachable())
    if blocked:
        log.warning("hybridhub: %s lets no other account through, so the local backend's servers run as this "
                    "hub's own user, not as each user's own account; put the checkout where all users can "
                    "pass (e.g. /opt/hybridhub) to keep users apart", blocked)
        c.LocalBackend.separate_users = False


def named_server_limit(per_user: int) -> Callable[[Any], int]:
    """A ``JupyterHub.named_server_limit_per_user`` callable: ``per_user`` named servers for a person's
    own requests, no limit (0) for a service's, so the portal starts a ``verify-<id>`` server (deleted
    when the verification ends) however many servers the user runs."""

    def limit(handler: Any) -> int:
        return per_user if getattr(handler.current_user, "kind", None) == "user" else 0

    return limit


def configure_hub(
    c: Config,
    *,
    data_dir: Path,
    mode: str = "demo",
    db_url: str = "",
    demo: bool = True,
    bind_url: str = "http://127.0.0.1:8000",
    catalog_file: str = "",
    meter_interval: float | None = None,
    grace_seconds: float | None = None,
    portal_bind_url: str = "",
) -> None:
    """Apply hybridhub's settings to the JupyterHub config ``c``."""
    if mode not in ("demo", "production"):
        sys.exit(f"HYBRIDHUB_MODE must be 'demo' or 'production', got {mode!r}")
    keep_state_private(data_dir)
    share_if_unreachable(c, data_dir)
    db_url = db_url or default_db_url(data_dir)

    c.JupyterHub.bind_url = bind_url
    c.JupyterHub.db_url = f"sqlite:///{data_dir / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(data_dir / "jupyterhub_cookie_secret")
    c.ConfigurableHTTPProxy.pid_file = str(data_dir / "jupyterhub-proxy.pid")
    c.JupyterHub.cleanup_servers = False  # a hub restart re-adopts running servers

    c.HybridSpawner.backend_override = "local" if mode == "demo" else ""
    c.LocalBackend.home_root = str(data_dir / "homes")
    if mode == "demo" and os.environ.get("HYBRIDHUB_DEMO_INVENTORY", "1") != "0":
        c.LocalBackend.simulated_inventory = DEMO_INVENTORY
    c.JupyterHub.allow_named_servers = True  # each on its own hardware; verifications run in named servers
    c.JupyterHub.named_server_limit_per_user = named_server_limit(DEMO_NAMED_SERVER_LIMIT)
    c.Spawner.default_url = "/lab"
    c.Spawner.args = ["--allow-root"]  # harmless as a normal user; needed when the hub runs as root
    c.Spawner.start_timeout = 120
    c.Spawner.http_timeout = 60
    add_hybridhub(
        c, db_url=db_url, catalog_file=catalog_file, meter_interval=meter_interval,
        grace_seconds=grace_seconds, portal_bind_url=portal_bind_url,
        quota_admins=DEMO_ADMINS if demo else (), quota_leaders=DEMO_LEADERS if demo else {},
        instructors=DEMO_INSTRUCTORS if demo else {},
    )
    if mode == "production":
        configure_production(c, env=os.environ)

    if demo:
        c.LocalBackend.create_system_users = True  # a root hub runs each demo user's server as their own account
        c.JupyterHub.authenticator_class = "shared-password"
        c.SharedPasswordAuthenticator.user_password = DEMO_USER_PASSWORD
        c.SharedPasswordAuthenticator.admin_password = DEMO_ADMIN_PASSWORD
        c.Authenticator.admin_users = set(DEMO_ADMINS)
        c.Authenticator.allowed_users = {u for g in DEMO_GROUPS.values() for u in g["users"]}
        c.JupyterHub.load_groups = DEMO_GROUPS
        seed_demo_budgets(db_url)
