# The peer of bench/spawn_docker.py: plain JupyterHub with DockerSpawner, nothing of hybridhub's.
# The same engine, image, read-only binds, server command and host networking as the docker backend
# of the benchmark's hybridhub hub (HYBRIDHUB_BENCH_DOCKER, JSON, written by bench/spawn_docker.py);
# ports, admin service and log level come from HYBRIDHUB_EXTRA_CONFIG (tests.fixtures.hub.Hub).
import json
import os
from pathlib import Path

c = get_config()  # noqa: F821  (provided by JupyterHub)

data = Path(os.environ["HYBRIDHUB_DATA_DIR"])
bench = json.loads(os.environ["HYBRIDHUB_BENCH_DOCKER"])
c.JupyterHub.bind_url = os.environ["HYBRIDHUB_BIND_URL"]
c.JupyterHub.db_url = f"sqlite:///{data / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(data / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.pid_file = str(data / "jupyterhub-proxy.pid")
from dockerspawner import DockerSpawner  # noqa: E402


class HostNetworkDockerSpawner(DockerSpawner):
    """DockerSpawner on host networking (the test engines have no bridge): the server is on 127.0.0.1."""

    async def get_ip_and_port(self):
        return "127.0.0.1", self.port


c.JupyterHub.spawner_class = HostNetworkDockerSpawner
c.DockerSpawner.client_kwargs = {"base_url": bench["engine"]}
c.DockerSpawner.image = bench["image"]
c.DockerSpawner.cmd = bench["cmd"]
c.DockerSpawner.read_only_volumes = bench["binds"]
c.DockerSpawner.network_name = "host"
c.DockerSpawner.use_internal_ip = True  # no port bindings (host networking)
c.DockerSpawner.remove = True
c.DockerSpawner.name_template = "bench-peer-{username}"
c.DockerSpawner.volumes = {"bench-peer-{username}": "/home/jovyan"}  # as the floor's `docker run -v`
c.DockerSpawner.notebook_dir = "/home/jovyan"
c.DockerSpawner.environment = {"HOME": "/home/jovyan"}
c.DockerSpawner.extra_host_config = {"tmpfs": {"/tmp": ""}}
c.Spawner.ip = "127.0.0.1"
c.Spawner.port = bench["port"]
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {"alice"}
c.Spawner.default_url = "/lab"
c.Spawner.args = ["--allow-root"]
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 60

load_subconfig(os.environ["HYBRIDHUB_EXTRA_CONFIG"])  # noqa: F821
