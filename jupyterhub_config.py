# hybridhub: JupyterHub configuration.
#
# Runs as is:  jupyterhub -f jupyterhub_config.py   (see README.md, "Run the demo")
#   embedded default: SQLite, the `local` backend for every class (simulated hardware),
#   demo users and groups, http://127.0.0.1:8000
#
# Production is switched on by environment variables (nothing to edit here):
#   HYBRIDHUB_MODE=production        each class uses its real backend (docker / swarm / ec2)
#   HYBRIDHUB_DB_URL=postgresql+psycopg://hub@db.example.edu/hybridhub
#   HYBRIDHUB_DEMO=0                 no demo users; configure a real authenticator below
#   HYBRIDHUB_CATALOG=/etc/hybridhub/catalog.yaml   your offerings, prices and groups
#   HYBRIDHUB_DOCKER_HOSTS=/etc/hybridhub/gpu-hosts.yaml   GPU host inventory (docs/docker.md)
#   HYBRIDHUB_AWS_REGION, HYBRIDHUB_AWS_SUBNET, HYBRIDHUB_AWS_SECURITY_GROUP (comma-separated),
#   HYBRIDHUB_AWS_INSTANCE_PROFILE, HYBRIDHUB_HOME_S3_URI, HYBRIDHUB_HUB_ID  (docs/aws.md);
#       AWS credentials come from boto3's standard chain (instance role in production).
#   HYBRIDHUB_METER_INTERVAL=60, HYBRIDHUB_GRACE_SECONDS=300   metering tick and stop grace
#   HYBRIDHUB_EXTRA_CONFIG=/path/extra_config.py   loaded last (site overrides; tests use it)
# Every setting is documented in README.md, "Configuration reference".

import os
from pathlib import Path

from hybridhub.hub.config import configure_hub

c = get_config()  # noqa: F821  (provided by JupyterHub)

HERE = Path(__file__).resolve().parent
configure_hub(
    c,
    data_dir=Path(os.environ.get("HYBRIDHUB_DATA_DIR", HERE / "var")),
    mode=os.environ.get("HYBRIDHUB_MODE", "demo"),
    db_url=os.environ.get("HYBRIDHUB_DB_URL", ""),
    demo=os.environ.get("HYBRIDHUB_DEMO", "1") != "0",
    bind_url=os.environ.get("HYBRIDHUB_BIND_URL", "http://127.0.0.1:8000"),
    catalog_file=os.environ.get("HYBRIDHUB_CATALOG", ""),
)

# --- Production authenticator (example; HYBRIDHUB_DEMO=0) ------------------------------
# c.JupyterHub.authenticator_class = "generic-oauth"     # your university's SSO
# c.GenericOAuthenticator.manage_groups = True           # groups (labs, courses) from the IdP
# c.Authenticator.admin_users = {"hub-admin"}

extra = os.environ.get("HYBRIDHUB_EXTRA_CONFIG")
if extra:
    load_subconfig(extra)  # noqa: F821  (provided by JupyterHub)
