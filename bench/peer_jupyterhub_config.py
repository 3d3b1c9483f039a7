# The peer of bench/spawn_local.py: plain JupyterHub with its SimpleLocalProcessSpawner, nothing of
# hybridhub's.  Same ports, admin service and log level as the hybridhub hub of the benchmark (they come
# from HYBRIDHUB_EXTRA_CONFIG, written by tests.fixtures.hub.Hub), same server command and timeouts.
import os
from pathlib import Path

c = get_config()  # noqa: F821  (provided by JupyterHub)

data = Path(os.environ["HYBRIDHUB_DATA_DIR"])
c.JupyterHub.bind_url = os.environ["HYBRIDHUB_BIND_URL"]
c.JupyterHub.db_url = f"sqlite:///{data / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(data / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.pid_file = str(data / "jupyterhub-proxy.pid")
c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
c.SimpleLocalProcessSpawner.home_dir_template = str(data / "homes" / "{username}")
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {"alice"}
c.Spawner.default_url = "/lab"
c.Spawner.args = ["--allow-root"]  # as the hybridhub demo: the machine may run the hub as root
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 60

load_subconfig(os.environ["HYBRIDHUB_EXTRA_CONFIG"])  # noqa: F821
