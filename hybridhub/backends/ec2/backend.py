"""The EC2 spawner: launch, watch and terminate one instance per server (see the package)."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid

from botocore.exceptions import BotoCoreError, ClientError
from jupyterhub.spawner import Spawner
from traitlets import Any, Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, validate

from hybridhub.backends.base import BackendMixin, KnownServer, Reconciled, poll_until, until_answering
from hybridhub.backends.ec2.aws import AwsCalls
from hybridhub.backends.ec2.bootstrap import Ec2Bootstrap
from hybridhub.backends.ec2.launch import (
    CAPACITY_CODES,
    DEFAULT_ROOT_VOLUME_GB,
    GONE_STATES,
    MIN_ROOT_VOLUME_GB,
    NEURON_DLAMI_PARAMETER,
    UNSUPPORTED_CODES,
    Ec2Fields,
    described_instances,
    error_code,
    family,
    instance_tags,
    launch_error,
    root_volume_size,
    run_instances_params,
)
from hybridhub.backends.ec2.reconcile import reconcile_instances
from hybridhub.backends.ec2.secrets import secret_filter
from hybridhub.backends.ec2.spot import SpotWatch, clear_spot_banners
from hybridhub.errors import user_error
from hybridhub.tags import TAG_HUB, TAG_LAUNCH, TAG_SERVER, TAG_USER

log = logging.getLogger(__name__)


class Ec2Backend(Ec2Bootstrap, SpotWatch, AwsCalls, BackendMixin, Spawner):
    """Run each server on its own EC2 instance of the offering's type (Trainium, Inferentia)."""

    watches_machine = True  # poll() reports the instance: any status means the machine is gone
    orphan_reservations = True  # a launch takes minutes: a hub may die while admitting one

    @classmethod
    async def reconcile(cls, known: list[KnownServer], config) -> Reconciled:
        """Terminate this hub's instances that no known server holds (sparing launches in flight); report
        known servers whose instance is gone (:mod:`hybridhub.backends.ec2.reconcile`)."""
        return await reconcile_instances(cls(config=config), known)

    offering_fields = Ec2Fields  # instance_type (required), spot

    @classmethod
    def offering_detail(cls, offering) -> str:
        """The instance type, and whether it is spot."""
        fields = cls.fields_of(offering)
        return fields.instance_type + (", spot" if fields.spot else "")

    # --- where and how to launch --------------------------------------------------------------

    region = Unicode("us-east-1", help="AWS region to launch instances in.").tag(config=True)

    endpoint_url = Unicode(
        "",
        help="Endpoint URL for boto3's EC2/SSM/SQS clients: for testing (a moto server) or a VPC "
        "interface endpoint. Empty: AWS's public endpoints (boto3's AWS_ENDPOINT_URL_<SERVICE> "
        "variables also work). Credentials always come from boto3's standard chain.",
    ).tag(config=True)

    aws_profile = Unicode(
        "",
        help="Named profile from the AWS config files; empty: boto3's default chain "
        "(environment, profile, instance role).",
    ).tag(config=True)

    boto_max_attempts = Int(
        3, help="Attempts per AWS call (botocore standard retry mode, includes the first)."
    ).tag(config=True)

    subnet_ids = List(
        Unicode(),
        help="Subnets to launch in, tried in order: a capacity shortage or an unsupported type in "
        "one subnet's availability zone moves on to the next. Empty: the default VPC.",
    ).tag(config=True)

    security_group_ids = List(
        Unicode(), help="Security groups for the instance: allow the hub to reach notebook_port."
    ).tag(config=True)

    ami_id = Unicode("", help="Explicit AMI id; overrides ami_ssm_parameter when set.").tag(
        config=True
    )

    ami_ssm_parameter = Unicode(
        NEURON_DLAMI_PARAMETER,
        help="Public SSM parameter holding the AMI id (the AWS Neuron multi-framework Deep "
        "Learning AMI by default).",
    ).tag(config=True)

    ami_cache_seconds = Float(
        3600, help="Seconds an AMI id resolved from SSM is reused before asking again."
    ).tag(config=True)

    check_type_offered = Bool(
        True,
        help="Ask DescribeInstanceTypeOfferings (cached for ami_cache_seconds) before launching, "
        "so a type the region lacks fails at once with a clear message.",
    ).tag(config=True)

    root_volume_gb = Dict(
        DEFAULT_ROOT_VOLUME_GB,
        help="Root volume size in GB by instance type or family (e.g. {'trn1': 512, "
        "'inf2.xlarge': 128}); Trainium families may not go below 512.",
    ).tag(config=True)

    default_root_volume_gb = Int(
        200, help="Root volume size in GB for types not in root_volume_gb."
    ).tag(config=True)

    root_volume_type = Unicode("gp3", help="EBS volume type of the root volume.").tag(config=True)

    root_device_name = Unicode(
        "", help="Root device name; empty: read from the AMI (DescribeImages)."
    ).tag(config=True)

    instance_profile = Unicode(
        "",
        help="IAM instance profile (name or ARN) for the instances, e.g. one allowed to read and "
        "write the users' S3 home prefix. Empty: none.",
    ).tag(config=True)

    key_name = Unicode("", help="EC2 key pair for SSH access by admins; empty: none.").tag(
        config=True
    )

    hub_id = Unicode(
        "hybridhub",
        help="Identifies this hub's instances (tag hybridhub:hub-id). Give each hub sharing an "
        "AWS account its own id: the orphan reconciler terminates unknown instances with it.",
    ).tag(config=True)

    extra_tags = Dict(
        help="More tags for every instance and volume (cost allocation, owner). Never secrets."
    ).tag(config=True)

    shutdown_action = Enum(
        ["terminate", "stop"],
        "terminate",
        help="What stop() does: 'terminate' the instance, or 'stop' it (EBS kept, started again "
        "with fresh user-data on the user's next launch of the same offering; spot instances "
        "are always terminated).",
    ).tag(config=True)

    # --- the server on the instance -----------------------------------------------------------

    connect_host = Unicode(
        "",
        help="Host the hub uses to reach the server; empty: the instance's private IP. For "
        "tunnels and tests.",
    ).tag(config=True)

    # --- timing -------------------------------------------------------------------------------

    boot_timeout = Float(
        600, help="Seconds to wait for the instance to be running with a private IP."
    ).tag(config=True)

    server_ready_timeout = Float(
        900,
        help="Seconds to wait, once running, for the server to answer HTTP (AMI boot, pip "
        "install, home sync). Set Spawner.start_timeout above boot_timeout + this.",
    ).tag(config=True)

    describe_interval = Float(
        5, help="Seconds between DescribeInstances calls while waiting for an instance."
    ).tag(config=True)

    ready_poll_interval = Float(5, help="Seconds between HTTP probes of the new server.").tag(
        config=True
    )

    waiter_delay = Float(5, help="Seconds between checks of the terminate/stop waiter.").tag(
        config=True
    )

    waiter_max_attempts = Int(
        120, help="Checks of the terminate/stop waiter before giving up (logged, not raised)."
    ).tag(config=True)

    capacity_retry_after = Int(
        300, help="Retry-After seconds sent with a 429 when AWS lacks capacity."
    ).tag(config=True)

    clock = Any(time.monotonic, help="Monotonic clock (tests inject one).")

    @validate("root_volume_gb")
    def _check_root_volume(self, proposal):
        sizes = proposal["value"]
        for key, size in sizes.items():
            if not isinstance(size, int) or size <= 0:
                raise TraitError(f"Ec2Backend.root_volume_gb[{key!r}] must be a positive integer")
            minimum = MIN_ROOT_VOLUME_GB.get(family(key), 0)
            if size < minimum:
                raise TraitError(
                    f"Ec2Backend.root_volume_gb[{key!r}] = {size}: "
                    f"{family(key)} needs at least {minimum} GB"
                )
        return sizes

    # --- state --------------------------------------------------------------------------------

    instance_id: str | None = None
    private_ip: str | None = None
    launch_token: str | None = None
    launch_region: str | None = None
    spot_notice: str | None = None
    _spot_notice_at: float | None = None

    def get_state(self):
        """Instance id, region and launch token: enough to find the instance after a restart."""
        state = super().get_state()
        if self.instance_id:
            state["instance_id"] = self.instance_id
        if self.launch_token:
            state["launch_token"] = self.launch_token
        if self.private_ip:
            state["private_ip"] = self.private_ip
        if self.instance_id or self.launch_token:
            state["region"] = self.launch_region or self.region
        return state

    def load_state(self, state):
        """Restore what :meth:`get_state` saved."""
        super().load_state(state)
        self.instance_id = state.get("instance_id")
        self.launch_token = state.get("launch_token")
        self.private_ip = state.get("private_ip")
        self.launch_region = state.get("region")

    def clear_state(self):
        """Forget the instance (after stop)."""
        super().clear_state()
        self.instance_id = self.private_ip = self.launch_token = self.launch_region = None
        self.spot_notice = None
        self._spot_notice_at = None

    @property
    def _label(self) -> str:
        return f"{self.user.name}/{self.name}" if self.name else self.user.name

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def spot(self) -> bool:
        """Whether this offering launches spot instances."""
        return bool(self.offering is not None and self.fields.spot)

    async def start(self):
        """Launch, wait for running + private IP, then for the server to answer."""
        feed = self._open_feed()
        self.spot_notice = None
        self._spot_notice_at = None
        clear_spot_banners(self.user.name)
        secrets = [self.api_token] if self.api_token else []
        secret_filter.add(*secrets)
        try:
            return await self._launch(secrets)
        except BaseException as e:
            await self._cleanup_failed_launch(e)
            if isinstance(e, (ClientError, BotoCoreError)):
                self.log.error(
                    "%s: AWS error during launch: %s", self._label, secret_filter.scrub(str(e))
                )
                raise user_error(
                    502,
                    f"The AWS launch failed ({error_code(e) or type(e).__name__}); "
                    "nothing was left running.",
                ) from None
            raise
        finally:
            secret_filter.discard(*secrets)
            feed.finish()

    async def _launch(self, secrets: list[str]):
        if self.offering is None:
            raise user_error(500, "This server has no EC2 offering configured.")
        itype = self.fields.instance_type
        self.launch_region = self.region
        market = "spot" if self.spot else "on-demand"
        self._emit(5, f"Preparing a {itype} ({market}) in {self.region}")

        user_data = self.user_data()
        secrets.append(base64.b64encode(user_data.encode()).decode())
        secret_filter.add(*secrets)

        if self.shutdown_action == "stop" and not self.spot:
            reused = await self._restart_stopped(itype, user_data)
            if reused:
                return await self._wait_until_ready(itype)

        image_id = await self.resolve_ami()
        if self.check_type_offered and not await self._type_offered(itype):
            raise launch_error(
                ClientError({"Error": {"Code": "Unsupported"}}, "RunInstances"),
                itype,
                self.region,
                self.capacity_retry_after,
            )
        root_device = await self._root_device(image_id)
        self._emit(10, f"Using machine image {image_id}")

        self.launch_token = f"hh-{uuid.uuid4().hex}"
        resp = await self._run_instance(image_id, itype, root_device, user_data)
        self.instance_id = resp["Instances"][0]["InstanceId"]
        self._emit(30, f"Instance {self.instance_id} requested; waiting for it to run")
        return await self._wait_until_ready(itype)

    async def _run_instance(self, image_id: str, itype: str, root_device: str, user_data: str) -> dict:
        """RunInstances in the first subnet that has the capacity (the next one after a capacity error)."""
        *earlier, last = list(self.subnet_ids) or [""]
        launch = (image_id, itype, root_device, user_data)
        for i, subnet in enumerate(earlier):
            resp = await self._run_in_subnet(i, subnet, *launch, last_try=False)
            if resp is not None:
                return resp
        return await self._run_in_subnet(len(earlier), last, *launch, last_try=True)

    async def _run_in_subnet(self, i: int, subnet: str, image_id: str, itype: str, root_device: str,
                             user_data: str, *, last_try: bool) -> dict | None:
        """RunInstances in one subnet; None after a capacity error while another subnet is left to try."""
        where = f" in {subnet}" if subnet else ""
        self._emit(15, f"Requesting a {itype}{where}")
        try:
            return await self.aws("ec2", "run_instances", **self._run_params(
                image_id, itype, subnet, root_device, user_data, f"{self.launch_token}-{i}"))
        except ClientError as e:
            self.log.warning("%s: RunInstances %s%s failed: %s", self._label, itype, where,
                             secret_filter.scrub(str(e)))
            if last_try or error_code(e) not in CAPACITY_CODES | UNSUPPORTED_CODES:
                raise launch_error(e, itype, self.region, self.capacity_retry_after) from None
        self._emit(15, f"No {itype} available{where}; trying the next subnet")
        return None

    def _run_params(self, image_id: str, itype: str, subnet: str, root_device: str, user_data: str,
                    client_token: str) -> dict:
        """RunInstances parameters for one subnet (the hub's tags, the sized root volume)."""
        tags = instance_tags(
            self.hub_id, self.user.name, self.name, self.offering.key, self.launch_token, self.extra_tags
        )
        return run_instances_params(
            image_id=image_id,
            instance_type=itype,
            subnet_id=subnet,
            security_group_ids=self.security_group_ids,
            root_device_name=root_device,
            root_volume_gb=root_volume_size(itype, self.root_volume_gb, self.default_root_volume_gb),
            root_volume_type=self.root_volume_type,
            user_data=user_data,
            tags=tags,
            client_token=client_token,
            spot=self.spot,
            instance_profile=self.instance_profile,
            key_name=self.key_name,
            shutdown_behavior="stop" if self.shutdown_action == "stop" and not self.spot else "terminate",
        )

    async def _restart_stopped(self, itype: str, user_data: str) -> bool:
        """Start this server's stopped instance again (shutdown_action='stop'), new user-data."""
        resp = await self.aws(
            "ec2",
            "describe_instances",
            Filters=[
                {"Name": f"tag:{TAG_HUB}", "Values": [self.hub_id]},
                {"Name": f"tag:{TAG_USER}", "Values": [self.user.name]},
                {"Name": f"tag:{TAG_SERVER}", "Values": [self.name]},
                {"Name": "instance-type", "Values": [itype]},
                {"Name": "instance-state-name", "Values": ["stopped"]},
            ],
        )
        found = described_instances(resp)
        if not found:
            return False
        inst = found[0]
        self.instance_id = inst["InstanceId"]
        self.launch_token = next(
            (t["Value"] for t in inst.get("Tags", []) if t["Key"] == TAG_LAUNCH), None
        )
        # ModifyInstanceAttribute wants base64 text (the SDK encodes the blob once more)
        await self.aws(
            "ec2",
            "modify_instance_attribute",
            InstanceId=self.instance_id,
            UserData={"Value": base64.b64encode(user_data.encode())},
        )
        await self.aws("ec2", "start_instances", InstanceIds=[self.instance_id])
        self._emit(30, f"Starting your stopped instance {self.instance_id} again")
        return True

    async def _wait_until_ready(self, itype: str):
        """Wait for the instance to run with a private IP, then for its server to answer; its address."""
        announced_pending = False

        async def running() -> dict | None:
            nonlocal announced_pending
            inst = await self.describe()
            state = (inst or {}).get("State", {}).get("Name", "gone")
            if inst is not None and state == "running" and inst.get("PrivateIpAddress"):
                return inst
            if inst is None or state in GONE_STATES:
                reason = (inst or {}).get("StateReason", {}).get("Message", "")
                self.log.error(
                    "%s: instance %s went %s during launch: %s", self._label, self.instance_id, state, reason
                )
                raise user_error(
                    503,
                    f"The {itype} instance stopped while booting ({state}). "
                    "Nothing was left running; please try again.",
                )
            if not announced_pending:
                self._emit(40, f"Instance {self.instance_id} is {state}")
                announced_pending = True
            return None

        inst = await poll_until(running, interval=self.describe_interval, timeout=self.boot_timeout, clock=self.clock)
        if inst is None:
            raise user_error(
                504,
                f"The {itype} instance did not start within "
                f"{int(self.boot_timeout)} s; it has been terminated.",
            )
        self.private_ip = inst["PrivateIpAddress"]
        host = self.connect_host or self.private_ip
        self._emit(60, f"Instance running at {self.private_ip}; waiting for Jupyter to answer")
        await self._wait_for_jupyter(host, itype)
        self._emit(90, "Your Jupyter server on AWS is answering")
        return host, self.notebook_port

    async def _wait_for_jupyter(self, host: str, itype: str) -> None:
        """Return once the server answers HTTP (any status); a 503 once the instance is no longer running
        (asked every ``describe_interval``), a 504 after ``server_ready_timeout``."""
        next_describe = self.clock() + self.describe_interval

        async def stopped() -> bool:
            nonlocal next_describe
            now = self.clock()
            if now >= next_describe:
                next_describe = now + self.describe_interval
                inst = await self.describe()
                state = (inst or {}).get("State", {}).get("Name", "gone")
                if state != "running":
                    raise user_error(503, f"The {itype} instance stopped while starting Jupyter ({state}).")
            return False

        if not await until_answering(
            host, self.notebook_port, self._api_path, interval=self.ready_poll_interval,
            timeout=self.server_ready_timeout, died=stopped, clock=self.clock,
            probe_timeout=max(1.0, min(5.0, self.ready_poll_interval)),
        ):
            raise user_error(
                504,
                f"The Jupyter server on the {itype} instance did not answer within "
                f"{int(self.server_ready_timeout)} s; the instance has been terminated.",
            )

    async def _cleanup_failed_launch(self, error: BaseException) -> None:
        """Terminate whatever this launch created; shielded so a cancelled start still cleans up."""

        async def cleanup():
            ids = {self.instance_id} if self.instance_id else set()
            if self.launch_token:
                try:
                    ids.update(await self._find_by_launch_token(self.launch_token))
                except (ClientError, BotoCoreError) as e:
                    self.log.error(
                        "%s: cannot look up launch %s: %s", self._label, self.launch_token, e
                    )
            for iid in sorted(ids):
                self.log.warning(
                    "%s: launch failed (%s); terminating %s", self._label, type(error).__name__, iid
                )
                await self._terminate(iid)
            self.instance_id = self.private_ip = None

        task = asyncio.ensure_future(cleanup())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await task  # cancelled again: finish the cleanup anyway, then let the cancel through
            raise

    async def poll(self):
        """None while the instance runs; an exit status once it is gone (or interrupted)."""
        if not self.instance_id:
            return 0
        try:
            inst = await self.describe()
        except (ClientError, BotoCoreError) as e:
            self.log.warning(
                "%s: cannot describe %s (%s); assuming it still runs",
                self._label,
                self.instance_id,
                error_code(e) or type(e).__name__,
            )
            return None
        state = (inst or {}).get("State", {}).get("Name", "gone")
        if inst is None or state in GONE_STATES:
            self.log.info("%s: instance %s is %s", self._label, self.instance_id, state)
            return 0
        if self.spot or inst.get("InstanceLifecycle") == "spot":
            return await self._check_spot(inst)
        return None

    async def stop(self, now=False):
        """Terminate the instance (or stop it, per shutdown_action) and wait until it is done."""
        if not self.instance_id:
            return
        iid = self.instance_id
        if self.shutdown_action == "stop" and not self.spot:
            try:
                await self.aws("ec2", "stop_instances", InstanceIds=[iid])
            except ClientError as e:
                if error_code(e) != "InvalidInstanceID.NotFound":
                    raise
                return
            self.log.info("%s: stopping instance %s", self._label, iid)
            if not now:
                await self._wait("instance_stopped", iid)
            return
        self.log.info("%s: terminating instance %s", self._label, iid)
        await self._terminate(iid, wait=not now)

    def provenance(self) -> dict[str, object]:
        """The instance, its type and region."""
        return {
            "host": self.private_ip,
            "instance_id": self.instance_id,
            "instance_type": self.fields.instance_type if self.offering else None,
            "region": self.launch_region or self.region,
            "market": "spot" if self.spot else "on-demand",
        }
