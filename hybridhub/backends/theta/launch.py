"""One launch on Theta: create the deployment with a fresh key pair, wait for the node, start the server
over SSH, wait until Jupyter itself answers (a mixin of :class:`~hybridhub.backends.theta.ThetaBackend`)."""

from __future__ import annotations

import asyncio

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from hybridhub.backends.base import poll_until
from hybridhub.backends.theta import body as tb
from hybridhub.backends.theta.client import ThetaError
from hybridhub.backends.theta.home import fetch_home, send_home
from hybridhub.backends.theta.offering import display_name, launch_name
from hybridhub.backends.theta.ssh import SSH_ERRORS, LaunchKey, connect, start_server
from hybridhub.errors import user_error


class ThetaLaunch:
    """The steps of ``start()`` (the traits are :class:`~hybridhub.backends.theta.ThetaBackend`'s)."""

    async def _launch(self):
        client = self.client()
        fields = self.fields
        model = self.offering.model
        self._emit(5, f"Asking Theta EdgeCloud for a {model} node")
        res = await self._quote(client, fields)
        price = f" at ${res.price_per_hour_usd:.2f}/h" if res.price_per_hour_usd is not None else ""
        key = LaunchKey()  # this launch's only: lives in this start's memory
        self.deployment_name = launch_name(self.hub_id)
        request = tb.deployment_body(
            template_id=fields.deployment_template_id, resource_id=fields.resource_id,
            image=fields.container_image or self.offering.image, ssh_public_key=key.public_openssh,
            name=self.deployment_name, display_name=display_name(self.user.name, self.name),
            region=fields.region, ssh_port=self.node_ssh_port, http_port=self.node_http_port,
            max_price=fields.max_price_per_hour_usd, community=not fields.hosted,
        )
        self._emit(15, f"Creating a Theta GPU Node ({fields.resource_id}){price}")
        try:
            created = tb.deployment(await client.create_gpu_deployment(request))
        except ThetaError as e:
            if e.status in (404, 409, 410):  # the node was taken between the quote and the create
                self.log.warning("%s: Theta refused the create: %s", self._label, e)
                raise user_error(503, f"The {model} node was taken before it could be reserved on Theta; "
                                      "nothing was created. Please try again.") from None
            raise
        self.deployment_id = created.id
        self._emit(30, f"Deployment {created.id} created; waiting for the node")
        dep = await self._wait_deployment(client)
        self.http_url = dep.http_url or f"http://{dep.ssh_host}:{self.node_http_port}"
        if (store := self.key_store()) is not None:  # kept for the stop, even after a hub restart
            store.keep(self.deployment_name, key)
        await self._start_over_ssh(dep, key)
        if self.home() is not None:  # kept in memory to copy the home back at stop
            self._key, self._node = key, dep
        self._emit(80, "JupyterLab started on the node; waiting for it to answer")
        return self.http_url

    async def _start_over_ssh(self, dep: tb.Deployment, key: LaunchKey) -> None:
        """Log in to the node with this launch's key (its host key pinned) and start the server."""
        if not dep.ssh_host_public_key and not self.accept_unknown_host_key:
            raise user_error(503, f"Theta gave no host key for the {self.offering.model} node, so the hub cannot "
                                  "check whom it logs in to; nothing is left running.")
        self._emit(60, f"Node running; logging in over SSH to {dep.ssh_host}:{dep.ssh_port}")
        self.ip, self.port = self.node_bind_ip, self.node_http_port  # JUPYTERHUB_SERVICE_URL on the node
        env = self.get_env() | ({"HOME": self.node_home} if self.node_home else {})
        try:
            conn = await connect(dep.ssh_host, dep.ssh_port, self.ssh_user, key, dep.ssh_host_public_key,
                                 timeout=self.boot_timeout, interval=min(1.0, self.poll_interval))
            async with conn:
                home = self.home()
                if home is not None:
                    self._emit(70, "Copying your home to the node" + (" (confidential folders left out)"
                                                                      if self.hidden_paths else ""))
                    await send_home(conn, home, self.hidden_paths, self.node_home)
                await start_server(conn, [*self.node_cmd, *self.get_args()], env)
        except (*SSH_ERRORS, RuntimeError) as e:
            self.log.error("%s: SSH to %s:%s failed: %s", self._label, dep.ssh_host, dep.ssh_port,
                           type(e).__name__ if not isinstance(e, RuntimeError) else e)
            raise user_error(503, f"The hub could not start JupyterLab on the Theta {self.offering.model} node "
                                  f"over SSH ({type(e).__name__}); nothing is left running.") from None

    async def _fetch_home(self) -> None:
        """Copy the home back from a node that still runs (errors logged: the stop goes on)."""
        store = self.key_store()
        if self._key is None and store is not None and self.deployment_name:
            self._key = store.get(self.deployment_name)  # the hub restarted since the start
        if self._key is None:
            self.log.warning("%s: the home on the Theta node cannot be copied back (the hub restarted since "
                             "the start and c.ThetaBackend.key_dir kept no key for it)", self._label)
            return
        if await self.poll() is not None:
            self.log.warning("%s: the Theta node is gone; its copy of the home is lost", self._label)
            return
        try:
            async with asyncio.timeout(self.home_sync_timeout):
                if self._node is None:  # after a hub restart: where the node's sshd is, from Theta
                    self._node = tb.deployment(await self.client().get_gpu_deployment(self.deployment_id))
                node = self._node
                async with await connect(node.ssh_host, node.ssh_port, self.ssh_user, self._key,
                                         node.ssh_host_public_key, timeout=10) as conn:
                    count = await fetch_home(conn, self.home(), self.hidden_paths, self.node_home)
            self.log.info("%s: copied the home back from the Theta node (%d entries)", self._label, count)
        except (*SSH_ERRORS, RuntimeError, OSError, ThetaError, ValueError) as e:
            self.log.error("%s: copying the home back from the Theta node failed: %s", self._label,
                           type(e).__name__ if not isinstance(e, RuntimeError) else e)

    async def wait_until_answering(self, ip: str, port: int) -> bool:
        """True once Jupyter's own API answers 200 through the node's HTTP endpoint: Theta's ingress answers
        404/503/401 while it warms up, which is not the server."""
        url = self.http_url.rstrip("/") + self._api_path
        http = AsyncHTTPClient()
        probes = 0

        async def answered() -> bool | None:
            nonlocal probes
            probes += 1
            try:
                resp = await http.fetch(HTTPRequest(url, request_timeout=5, connect_timeout=5), raise_error=False)
            except (OSError, HTTPClientError):
                resp = None
            if resp is not None and resp.code == 200:
                return True
            return False if probes % 10 == 0 and await self.poll() is not None else None

        return bool(await poll_until(answered, interval=self.ready_poll_interval,
                                     timeout=self.server_ready_timeout, clock=self.clock))



