"""Hub-wide configuration shared by ``jupyterhub_config.py`` and the tests.

:func:`configure_hub` sets the spawner, database, templates, demo users and
groups, and the portal's managed services on a JupyterHub config object.  It
validates the catalog first, so a bad catalog stops the hub at start-up with
the offending key named.
"""

from __future__ import annotations

import sys
from pathlib import Path

from traitlets.config import Config

from spawner.catalog import CatalogError, load_catalog
from spawner.hybrid import templates_dir

#: Demo users (password below), their groups and the group kinds.
DEMO_GROUPS = {
    "course-ml101": {"users": ["alice", "bob"], "properties": {"kind": "course"}},
    "lab-vision": {"users": ["carol", "dave"], "properties": {"kind": "lab"}},
    "project-llm": {"users": ["dave"], "properties": {"kind": "project"}},
}
DEMO_ADMINS = {"admin"}
#: Demo-only passwords, documented in README.md.  Never use them in production.
DEMO_USER_PASSWORD = "hybridhub-demo"
DEMO_ADMIN_PASSWORD = "hybridhub-demo-admin-password-2026"
#: Demo budgets per group kind: accelerator-hours per class and month.
DEMO_BUDGETS = {
    "course": {"community": 40.0, "enterprise": 10.0, "aws": 10.0},
    "lab": {"community": 200.0, "enterprise": 100.0, "aws": 50.0},
    "project": {"community": 50.0, "enterprise": 50.0, "aws": 20.0},
}


def default_db_url(data_dir: Path) -> str:
    """The embedded SQLite database inside ``data_dir``."""
    return f"sqlite:///{data_dir / 'hybridhub.sqlite'}"


def seed_demo_budgets(db_url: str) -> None:
    """Create the demo groups and their monthly budgets (idempotent)."""
    from spawner.hybrid import accounting_for

    acct = accounting_for(db_url)
    acct.sync_groups(
        {name: g["users"] for name, g in DEMO_GROUPS.items()},
        kinds={name: g["properties"]["kind"] for name, g in DEMO_GROUPS.items()},
    )
    for name, g in DEMO_GROUPS.items():
        for resource_class, hours in DEMO_BUDGETS[g["properties"]["kind"]].items():
            acct.ensure_budget(name, resource_class, hours, unit="hours", period="monthly")


def configure_services(c: Config, *, db_url: str, meter_interval: float, grace_seconds: float) -> None:
    """Register hybridhub's managed services with the smallest scopes they need."""
    c.JupyterHub.services = [
        *[s for s in c.JupyterHub.get("services", []) if s.get("name") != "hybridhub-meter"],
        {
            "name": "hybridhub-meter",
            "command": [sys.executable, "-m", "portal.meter"],
            "environment": {
                "HYBRIDHUB_DB_URL": db_url,
                "HYBRIDHUB_METER_INTERVAL": str(meter_interval),
                "HYBRIDHUB_GRACE_SECONDS": str(grace_seconds),
            },
        },
    ]
    c.JupyterHub.load_roles = [
        *[r for r in c.JupyterHub.get("load_roles", []) if r.get("name") != "hybridhub-meter"],
        {"name": "hybridhub-meter", "services": ["hybridhub-meter"], "scopes": ["delete:servers", "list:users"]},
    ]


def configure_hub(
    c: Config,
    *,
    data_dir: Path,
    mode: str = "demo",
    db_url: str = "",
    demo: bool = True,
    bind_url: str = "http://127.0.0.1:8000",
    catalog_file: str = "",
    meter_interval: float = 60,
    grace_seconds: float = 300,
) -> None:
    """Apply hybridhub's settings to the JupyterHub config ``c``."""
    if mode not in ("demo", "production"):
        sys.exit(f"HYBRIDHUB_MODE must be 'demo' or 'production', got {mode!r}")
    data_dir.mkdir(parents=True, exist_ok=True)
    db_url = db_url or default_db_url(data_dir)

    c.JupyterHub.bind_url = bind_url
    c.JupyterHub.db_url = f"sqlite:///{data_dir / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(data_dir / "jupyterhub_cookie_secret")
    c.ConfigurableHTTPProxy.pid_file = str(data_dir / "jupyterhub-proxy.pid")
    c.JupyterHub.template_paths = [str(templates_dir())]
    c.JupyterHub.cleanup_servers = False  # a hub restart re-adopts running servers

    c.JupyterHub.spawner_class = "hybrid"
    c.HybridSpawner.db_url = db_url
    c.HybridSpawner.catalog_file = catalog_file
    c.HybridSpawner.backend_override = "local" if mode == "demo" else ""
    c.LocalBackend.home_root = str(data_dir / "homes")
    c.Spawner.default_url = "/lab"
    c.Spawner.args = ["--allow-root"]  # harmless as a normal user; needed when the hub runs as root
    c.Spawner.start_timeout = 120
    c.Spawner.http_timeout = 60

    try:
        load_catalog(path=catalog_file or None, backend_override="local" if mode == "demo" else None)
    except CatalogError as e:
        sys.exit(f"hybridhub: invalid resource catalog: {e}")

    from spawner.hybrid import accounting_for

    accounting_for(db_url)  # upgrades the schema now; refuses a newer one
    c.JupyterHub.template_vars = {
        "hybridhub_banners": lambda user: accounting_for(db_url).banners_for(user.name) if user else [],
    }

    configure_services(c, db_url=db_url, meter_interval=meter_interval, grace_seconds=grace_seconds)

    if demo:
        c.JupyterHub.authenticator_class = "shared-password"
        c.SharedPasswordAuthenticator.user_password = DEMO_USER_PASSWORD
        c.SharedPasswordAuthenticator.admin_password = DEMO_ADMIN_PASSWORD
        c.Authenticator.admin_users = set(DEMO_ADMINS)
        c.Authenticator.allowed_users = {u for g in DEMO_GROUPS.values() for u in g["users"]}
        c.JupyterHub.load_groups = DEMO_GROUPS
        seed_demo_budgets(db_url)
