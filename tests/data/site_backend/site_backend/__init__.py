"""A site's backend in one module: a server process on the hub's machine, in one of the lab's racks.

It implements hybridhub's contract (hybridhub.backends.base) and nothing more: JupyterHub's
start/poll/stop come from SimpleLocalProcessSpawner, the backend checks its own offering field
(``extra.rack``) and says where each server runs.
"""

import os

from jupyterhub.spawner import SimpleLocalProcessSpawner

from hybridhub.backends.base import BackendMixin
from hybridhub.catalog import CatalogError


class RackBackend(BackendMixin, SimpleLocalProcessSpawner):
    """Servers in a named rack of the lab's own machines."""

    @classmethod
    def check_offering(cls, offering):
        rack = offering.extra.get("rack")
        if not isinstance(rack, str) or not rack:
            raise CatalogError(offering.config_key("extra.rack"), "the lab-rack backend needs the rack's name")

    async def start(self):
        os.makedirs(self.home_dir, exist_ok=True)
        return await super().start()

    def get_env(self):
        env = super().get_env()
        env["SITE_RACK"] = self.offering.extra["rack"]
        return env

    def provenance(self):
        return {"host": f"rack {self.offering.extra['rack']}"}
