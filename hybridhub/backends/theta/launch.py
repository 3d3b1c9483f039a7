"""One launch on Theta: create the deployment with a fresh key pair, wait for the node, start the server
over SSH, wait until Jupyter itself answers (a mixin of :class:`~hybridhub.backends.theta.ThetaBackend`)."""

from __future__ import annotations

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from hybridhub.backends.base import poll_until
from hybridhub.backends.theta import body as tb
from hybridhub.backends.theta.client import ThetaError
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
        await self._start_over_ssh(dep, key)
        self._emit(80, "JupyterLab started on the node; waiting for it to answer")
        return self.http_url

    async def _start_over_ssh(self, dep: tb.Deployment, key: LaunchKey) -> None:
        """Log in to the node with this launch's key (its host key pinned) and start the server."""
        if not dep.ssh_host_public_key and not self.accept_unknown_host_key:
            raise user_error(503, f"Theta gave no host key for the {self.offering.model} node, so the hub cannot "
                                  "check whom it logs in to; nothing is left running.")
        self._emit(60, f"Node running; logging in over SSH to {dep.ssh_host}:{dep.ssh_port}")
        self.ip, self.port = self.node_bind_ip, self.node_http_port  # JUPYTERHUB_SERVICE_URL on the node
        env = self.get_env()
        try:
            conn = await connect(dep.ssh_host, dep.ssh_port, self.ssh_user, key, dep.ssh_host_public_key,
                                 timeout=self.boot_timeout, interval=min(1.0, self.poll_interval))
            async with conn:
                await start_server(conn, [*self.node_cmd, *self.get_args()], env)
        except (*SSH_ERRORS, RuntimeError) as e:
            self.log.error("%s: SSH to %s:%s failed: %s", self._label, dep.ssh_host, dep.ssh_port,
                           type(e).__name__ if not isinstance(e, RuntimeError) else e)
            raise user_error(503, f"The hub could not start JupyterLab on the Theta {self.offering.model} node "
                                  f"over SSH ({type(e).__name__}); nothing is left running.") from None

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



