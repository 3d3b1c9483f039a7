"""The EC2 spawner: launch, watch and terminate one instance per server (see the package)."""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any as TAny

import boto3
import jupyterhub
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, WaiterError
from jupyterhub.spawner import Spawner
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Any, Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, validate

from hybridhub.backends.base import BackendMixin
from hybridhub.backends.ec2.secrets import secret_filter
from hybridhub.backends.ec2.spot import (
    clear_spot_banners,
    record_spot_banner,
    spot_request_notice,
)
from hybridhub.backends.ec2.userdata import BootstrapSpec, render_user_data
from hybridhub.catalog import CatalogError
from hybridhub.errors import user_error
from hybridhub.tags import TAG_HUB, TAG_LAUNCH, TAG_OFFERING, TAG_SERVER, TAG_USER

NEURON_DLAMI_PARAMETER = "/aws/service/neuron/dlami/multi-framework/ubuntu-22.04/latest/image_id"

#: Root volume sizes (GB) by instance type or family.  Trainium needs at least 512 GB.
DEFAULT_ROOT_VOLUME_GB = {"trn1": 512, "trn1n": 512, "trn2": 512, "inf1": 256, "inf2": 256}
MIN_ROOT_VOLUME_GB = {"trn1": 512, "trn1n": 512, "trn2": 512}

CAPACITY_CODES = {
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientHostCapacity",
    "SpotMaxPriceTooLow",
    "InsufficientReservedInstanceCapacity",
}
LIMIT_CODES = {
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "MaxSpotInstanceCountExceeded",
    "InsufficientFreeAddressesInSubnet",
    "VolumeLimitExceeded",
}
UNSUPPORTED_CODES = {"Unsupported", "InvalidInstanceType.NotFound", "InvalidInstanceType"}
GONE_STATES = {"shutting-down", "terminated", "stopping", "stopped"}

log = logging.getLogger(__name__)

_executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="hybridhub-ec2")
_clients: dict[tuple, TAny] = {}
_clients_lock = threading.Lock()
_ami_cache: dict[tuple[str, str, str], tuple[float, str]] = {}
_offered_cache: dict[tuple[str, str, str], tuple[float, bool]] = {}
_root_devices: dict[tuple[str, str, str], str] = {}  # an AMI's root device never changes


# ------------------------------------------------------------------ pure helpers


def family(instance_type: str) -> str:
    """``trn1.32xlarge`` -> ``trn1``."""
    return instance_type.split(".", 1)[0]


def root_volume_size(instance_type: str, sizes: dict[str, int], default: int) -> int:
    """Root volume GB for ``instance_type``: exact type, then family, then ``default``; never
    below the family's minimum (Trainium: 512 GB)."""
    fam = family(instance_type)
    size = sizes.get(instance_type, sizes.get(fam, default))
    return max(int(size), MIN_ROOT_VOLUME_GB.get(fam, 0))


def instance_tags(
    hub_id: str,
    username: str,
    server_name: str,
    offering_key: str,
    launch_token: str,
    extra: dict[str, str] | None = None,
) -> list[dict[str, str]]:
    """The tags every instance (and its volume) carries; never a token."""
    tags = {
        **(extra or {}),
        "Name": f"hybridhub-{username}" + (f"-{server_name}" if server_name else ""),
        TAG_HUB: hub_id,
        TAG_USER: username,
        TAG_SERVER: server_name,
        TAG_OFFERING: offering_key,
        TAG_LAUNCH: launch_token,
    }
    return [{"Key": k, "Value": str(v)} for k, v in tags.items()]


def run_instances_params(
    *,
    image_id: str,
    instance_type: str,
    subnet_id: str,
    security_group_ids: list[str],
    root_device_name: str,
    root_volume_gb: int,
    root_volume_type: str,
    user_data: str,
    tags: list[dict[str, str]],
    client_token: str,
    spot: bool = False,
    instance_profile: str = "",
    key_name: str = "",
    shutdown_behavior: str = "terminate",
) -> dict[str, TAny]:
    """The keyword arguments of ``ec2.run_instances`` for one server (no AWS call)."""
    params: dict[str, TAny] = {
        "ImageId": image_id,
        "InstanceType": instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "ClientToken": client_token,
        "UserData": user_data,
        "MetadataOptions": {
            "HttpTokens": "required",
            "HttpEndpoint": "enabled",
            "HttpPutResponseHopLimit": 1,
        },
        "BlockDeviceMappings": [
            {
                "DeviceName": root_device_name,
                "Ebs": {
                    "VolumeSize": root_volume_gb,
                    "VolumeType": root_volume_type,
                    "DeleteOnTermination": True,
                    "Encrypted": True,
                },
            }
        ],
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tags},
            {"ResourceType": "volume", "Tags": tags},
        ],
        "InstanceInitiatedShutdownBehavior": shutdown_behavior,
    }
    if subnet_id:
        params["SubnetId"] = subnet_id
    if security_group_ids:
        params["SecurityGroupIds"] = list(security_group_ids)
    if spot:
        params["InstanceMarketOptions"] = {
            "MarketType": "spot",
            "SpotOptions": {
                "SpotInstanceType": "one-time",
                "InstanceInterruptionBehavior": "terminate",
            },
        }
    if instance_profile:
        key = "Arn" if instance_profile.startswith("arn:") else "Name"
        params["IamInstanceProfile"] = {key: instance_profile}
    if key_name:
        params["KeyName"] = key_name
    return params


def error_code(e: BaseException) -> str:
    """The AWS error code of a ClientError ('' otherwise)."""
    if isinstance(e, ClientError):
        return str(e.response.get("Error", {}).get("Code", ""))
    return ""


def described_instances(resp: dict) -> list[dict]:
    """The instances of a DescribeInstances response, over all its reservations."""
    return [i for r in resp.get("Reservations", []) for i in r.get("Instances", [])]


def launch_error(e: ClientError, instance_type: str, region: str, retry_after: int):
    """A user-facing HTTPError for a failed ``run_instances`` (token-free by construction)."""
    code = error_code(e)
    if code in CAPACITY_CODES:
        return user_error(
            429,
            f"AWS has no {instance_type} capacity available in {region} right now. "
            f"Please try again in a few minutes, or pick another offering.",
            headers={"Retry-After": str(retry_after)},
        )
    if code in LIMIT_CODES:
        return user_error(
            503,
            f"The hub's AWS account has reached its limit for {instance_type} instances ({code}). "
            "Please try again later or ask the hub's administrators to raise the limit.",
        )
    if code in UNSUPPORTED_CODES:
        return user_error(
            400,
            f"The instance type {instance_type} is not offered in {region} "
            "(or in the configured subnet's availability zone). Pick another offering.",
        )
    return user_error(500, f"AWS refused to launch the {instance_type} server ({code or 'error'}).")


# ------------------------------------------------------------------ the backend


class Ec2Backend(BackendMixin, Spawner):
    """Run each server on its own EC2 instance of the offering's type (Trainium, Inferentia)."""

    watches_machine = True  # poll() reports the instance: any status means the machine is gone

    @classmethod
    def check_offering(cls, offering) -> None:
        """An EC2 offering names its instance type."""
        if not offering.instance_type:
            raise CatalogError(offering.config_key("instance_type"), "is required for the ec2 backend")

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

    notebook_port = Int(8888, help="Port jupyterhub-singleuser listens on, on the instance.").tag(
        config=True
    )

    bind_ip = Unicode(
        "0.0.0.0", help="Address jupyterhub-singleuser binds to on the instance."
    ).tag(config=True)

    connect_host = Unicode(
        "",
        help="Host the hub uses to reach the server; empty: the instance's private IP. For "
        "tunnels and tests.",
    ).tag(config=True)

    python_path = Unicode(
        "auto",
        help="Python that runs jupyterhub-singleuser on the instance; 'auto': the newest "
        "/opt/aws_neuronx_venv_pytorch_*/bin/python of the Neuron DLAMI, else python3.",
    ).tag(config=True)

    jupyterhub_pip_spec = Unicode(
        f"jupyterhub=={jupyterhub.__version__}",
        help="pip requirement installed on the instance when its Python lacks jupyterhub.",
    ).tag(config=True)

    lab_extension_pip_spec = Unicode(
        "",
        help="pip requirement of the hybridhub wheel (e.g. an https:// or s3-synced path to "
        "hybridhub-0.1.0-py3-none-any.whl), installed with --no-deps on the instance so its "
        "JupyterLab shows the session and stop warnings (docs/lab.md); empty: not installed.",
    ).tag(config=True)

    unix_user = Unicode(
        "jovyan",
        help="Unix user the server runs as on the instance (created if missing); empty: the "
        "user running the bootstrap.",
    ).tag(config=True)

    instance_home_dir = Unicode(
        "/home/jovyan",
        help="The user's home on the instance (the same path as in the notebook images of the "
        "other classes).",
    ).tag(config=True)

    bootstrap_state_dir = Unicode(
        "/var/lib/hybridhub",
        help="Root-only directory on the instance for the server's env file and bootstrap state.",
    ).tag(config=True)

    home_storage = Enum(
        ["s3", "efs", "none"],
        "s3",
        help="How the user's home reaches the instance: 's3' syncs home_s3_uri down at start and "
        "up periodically, at exit and on a spot notice; 'efs' mounts efs_target over NFS; "
        "'none' keeps it on the instance's root volume only.",
    ).tag(config=True)

    home_s3_uri = Unicode(
        "",
        help="S3 URI of a user's home, with {username} (e.g. s3://lab-homes/homes/{username}/).",
    ).tag(config=True)

    home_s3_endpoint_url = Unicode(
        "", help="S3 endpoint used by the instance's sync (tests, VPC endpoints); empty: AWS's."
    ).tag(config=True)

    home_sync_command = Unicode("aws", help="AWS CLI used on the instance for 'aws s3 sync'.").tag(
        config=True
    )

    home_sync_interval = Int(
        300, help="Seconds between home syncs up to S3 while the server runs (0: only at exit)."
    ).tag(config=True)

    efs_target = Unicode(
        "",
        help="NFS target for home_storage='efs', with {username} "
        "(e.g. fs-0123.efs.us-east-1.amazonaws.com:/homes/{username}).",
    ).tag(config=True)

    imds_url = Unicode(
        "http://169.254.169.254",
        help="Instance metadata service the bootstrap asks for spot notices (tests point it at a "
        "stand-in).",
    ).tag(config=True)

    instance_spot_poll_seconds = Float(
        5, help="Seconds between the bootstrap's checks of the spot interruption notice."
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

    # --- spot ---------------------------------------------------------------------------------

    spot_notice_source = Any(
        spot_request_notice,
        help="Async callable (backend, instance_description) -> message or None that reports a "
        "spot interruption notice; polled by poll(). Default: the spot request's status; "
        "EventBridgeSpotNotices(queue_url) reads EventBridge's warning events from SQS.",
    ).tag(config=True)

    spot_grace_seconds = Float(
        60,
        help="Seconds after a spot notice before the hub terminates the server itself (the "
        "bootstrap syncs the home meanwhile; AWS interrupts at 120).",
    ).tag(config=True)

    spot_notice_hook = Any(
        None,
        help="Callable (spawner, message) run once on a spot notice, e.g. to post a hub banner or "
        "send mail. Whatever it is, the notice is logged and added to spot_banners_for(user).",
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

    # --- AWS plumbing -------------------------------------------------------------------------

    def client(self, service: str, region: str | None = None):
        """A cached boto3 client (thread-safe; credentials from boto3's standard chain)."""
        region = region or self.launch_region or self.region
        key = (service, region, self.endpoint_url, self.aws_profile, self.boto_max_attempts)
        with _clients_lock:
            if key not in _clients:
                session = boto3.session.Session(profile_name=self.aws_profile or None)
                _clients[key] = session.client(
                    service,
                    region_name=region,
                    endpoint_url=self.endpoint_url or None,
                    config=BotoConfig(
                        retries={"total_max_attempts": self.boto_max_attempts, "mode": "standard"}
                    ),
                )
            return _clients[key]

    async def aws(self, service: str, operation: str, **params):
        """Call ``client(service).operation(**params)`` in the thread pool."""
        method = getattr(self.client(service), operation)
        return await asyncio.get_running_loop().run_in_executor(
            _executor, functools.partial(method, **params)
        )

    async def _wait(self, waiter_name: str, instance_id: str) -> bool:
        waiter = self.client("ec2").get_waiter(waiter_name)
        call = functools.partial(
            waiter.wait,
            InstanceIds=[instance_id],
            WaiterConfig={"Delay": self.waiter_delay, "MaxAttempts": self.waiter_max_attempts},
        )
        try:
            await asyncio.get_running_loop().run_in_executor(_executor, call)
            return True
        except WaiterError as e:
            last = getattr(e, "last_response", None) or {}
            if last.get("Error", {}).get("Code") == "InvalidInstanceID.NotFound":
                return True
            self.log.error("Instance %s: %s did not complete: %s", instance_id, waiter_name, e)
            return False

    async def resolve_ami(self) -> str:
        """The AMI id: :attr:`ami_id`, else the SSM parameter's value (cached)."""
        if self.ami_id:
            return self.ami_id
        key = (self.region, self.endpoint_url, self.ami_ssm_parameter)
        cached = _ami_cache.get(key)
        if cached and time.monotonic() - cached[0] < self.ami_cache_seconds:
            return cached[1]
        try:
            resp = await self.aws("ssm", "get_parameter", Name=self.ami_ssm_parameter)
        except ClientError as e:
            self.log.error(
                "Cannot read AMI parameter %s in %s: %s", self.ami_ssm_parameter, self.region, e
            )
            raise user_error(
                503,
                "The AWS class is misconfigured (its machine image cannot be found). "
                "Please tell the hub's administrators.",
            ) from None
        value = resp["Parameter"]["Value"]
        _ami_cache[key] = (time.monotonic(), value)
        return value

    async def _root_device(self, image_id: str) -> str:
        if self.root_device_name:
            return self.root_device_name
        key = (self.region, self.endpoint_url, image_id)
        if key not in _root_devices:
            resp = await self.aws("ec2", "describe_images", ImageIds=[image_id])
            images = resp.get("Images", [])
            _root_devices[key] = (
                images[0].get("RootDeviceName", "/dev/sda1") if images else "/dev/sda1"
            )
        return _root_devices[key]

    async def _type_offered(self, instance_type: str) -> bool:
        key = (self.region, self.endpoint_url, instance_type)
        cached = _offered_cache.get(key)
        if cached and time.monotonic() - cached[0] < self.ami_cache_seconds:
            return cached[1]
        resp = await self.aws(
            "ec2",
            "describe_instance_type_offerings",
            LocationType="region",
            Filters=[{"Name": "instance-type", "Values": [instance_type]}],
        )
        offered = bool(resp.get("InstanceTypeOfferings"))
        _offered_cache[key] = (time.monotonic(), offered)
        return offered

    async def describe(self, instance_id: str | None = None) -> dict | None:
        """The instance's description, or None if AWS does not know it."""
        instance_id = instance_id or self.instance_id
        try:
            resp = await self.aws("ec2", "describe_instances", InstanceIds=[instance_id])
        except ClientError as e:
            if error_code(e) == "InvalidInstanceID.NotFound":
                return None
            raise
        found = described_instances(resp)
        return found[0] if found else None

    async def _find_by_launch_token(self, token: str) -> list[str]:
        resp = await self.aws(
            "ec2",
            "describe_instances",
            Filters=[
                {"Name": f"tag:{TAG_LAUNCH}", "Values": [token]},
                {
                    "Name": "instance-state-name",
                    "Values": ["pending", "running", "stopping", "stopped"],
                },
            ],
        )
        return [i["InstanceId"] for i in described_instances(resp)]

    @property
    def _label(self) -> str:
        return f"{self.user.name}/{self.name}" if self.name else self.user.name

    # --- user-data ----------------------------------------------------------------------------

    def server_env(self) -> dict[str, str]:
        """The server's environment: the hub's JUPYTERHUB_* settings, the hardware description."""
        self.ip = self.bind_ip
        self.port = self.notebook_port
        env = super().get_env()
        for key in (
            "PATH",
            "PYTHONPATH",
            "CONDA_ROOT",
            "CONDA_DEFAULT_ENV",
            "VIRTUAL_ENV",
            "LD_LIBRARY_PATH",
        ):
            env.pop(key, None)  # the hub's own paths mean nothing on the instance
        env.update(self.accelerator_env())
        if self.offering is not None and self.offering.instance_type:
            env["HYBRIDHUB_INSTANCE_TYPE"] = self.offering.instance_type
        return env

    def bootstrap_spec(self) -> BootstrapSpec:
        """What the user-data script will do for this server."""
        username = self.user.name
        return BootstrapSpec(
            env=self.server_env(),
            args=tuple(self.get_args()),
            python=self.python_path,
            jupyterhub_spec=self.jupyterhub_pip_spec,
            lab_spec=self.lab_extension_pip_spec,
            unix_user=self.unix_user,
            home_dir=self.instance_home_dir,
            state_dir=self.bootstrap_state_dir,
            home_storage=self.home_storage,
            s3_uri=self.home_s3_uri.format(username=username) if self.home_storage == "s3" else "",
            s3_endpoint_url=self.home_s3_endpoint_url,
            sync_command=self.home_sync_command,
            sync_interval=self.home_sync_interval,
            efs_target=self.efs_target.format(username=username)
            if self.home_storage == "efs"
            else "",
            imds_url=self.imds_url,
            spot_watch=bool(self.offering is not None and self.offering.spot),
            spot_poll_seconds=self.instance_spot_poll_seconds,
        )

    def user_data(self) -> str:
        """The instance's user-data (contains the server's API token)."""
        try:
            spec = self.bootstrap_spec()
        except ValueError as e:
            self.log.error("Ec2Backend configuration: %s", e)
            raise user_error(
                503,
                "The AWS class is misconfigured (home storage). "
                "Please tell the hub's administrators.",
            ) from None
        return render_user_data(spec, every_boot=self.shutdown_action == "stop")

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def spot(self) -> bool:
        """Whether this offering launches spot instances."""
        return bool(self.offering is not None and self.offering.spot)

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
        if self.offering is None or not self.offering.instance_type:
            raise user_error(500, "This offering has no EC2 instance type configured.")
        itype = self.offering.instance_type
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
        deadline = self.clock() + self.boot_timeout
        announced_pending = False
        while True:
            inst = await self.describe()
            state = (inst or {}).get("State", {}).get("Name", "gone")
            if inst is not None and state == "running" and inst.get("PrivateIpAddress"):
                self.private_ip = inst["PrivateIpAddress"]
                break
            if inst is None or state in GONE_STATES:
                reason = (inst or {}).get("StateReason", {}).get("Message", "")
                self.log.error(
                    "%s: instance %s went %s during launch: %s",
                    self._label,
                    self.instance_id,
                    state,
                    reason,
                )
                raise user_error(
                    503,
                    f"The {itype} instance stopped while booting ({state}). "
                    "Nothing was left running; please try again.",
                )
            if not announced_pending:
                self._emit(40, f"Instance {self.instance_id} is {state}")
                announced_pending = True
            if self.clock() >= deadline:
                raise user_error(
                    504,
                    f"The {itype} instance did not start within "
                    f"{int(self.boot_timeout)} s; it has been terminated.",
                )
            await asyncio.sleep(self.describe_interval)

        host = self.connect_host or self.private_ip
        self._emit(60, f"Instance running at {self.private_ip}; waiting for Jupyter to answer")
        await self._wait_until_answering(host, itype)
        self._emit(90, "Your Jupyter server on AWS is answering")
        return host, self.notebook_port

    async def _wait_until_answering(self, host: str, itype: str) -> None:
        base_url = self.server.base_url if self.server else "/"
        url = f"http://{host}:{self.notebook_port}{base_url}api"
        client = AsyncHTTPClient()
        deadline = self.clock() + self.server_ready_timeout
        next_describe = self.clock() + self.describe_interval
        while True:
            try:
                await client.fetch(
                    url,
                    request_timeout=max(1.0, min(5.0, self.ready_poll_interval)),
                    follow_redirects=False,
                )
                return
            except HTTPClientError as e:
                if e.code != 599:
                    return  # it answered, with a status: it is up
            except (TimeoutError, OSError):
                pass
            now = self.clock()
            if now >= deadline:
                raise user_error(
                    504,
                    f"The Jupyter server on the {itype} instance did not answer within "
                    f"{int(self.server_ready_timeout)} s; the instance has been terminated.",
                )
            if now >= next_describe:
                next_describe = now + self.describe_interval
                inst = await self.describe()
                state = (inst or {}).get("State", {}).get("Name", "gone")
                if state != "running":
                    raise user_error(
                        503, f"The {itype} instance stopped while starting Jupyter ({state})."
                    )
            await asyncio.sleep(self.ready_poll_interval)

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

    async def _terminate(self, instance_id: str, *, wait: bool = True) -> None:
        try:
            await self.aws("ec2", "terminate_instances", InstanceIds=[instance_id])
        except ClientError as e:
            if error_code(e) == "InvalidInstanceID.NotFound":
                return
            raise
        if wait:
            await self._wait("instance_terminated", instance_id)

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

    async def _check_spot(self, inst: dict):
        if self._spot_notice_at is None:
            source = self.spot_notice_source
            if isinstance(source, str):
                from traitlets.utils.importstring import import_item

                source = import_item(source)
            try:
                notice = await source(self, inst)
            except (ClientError, BotoCoreError) as e:
                self.log.warning("%s: spot notice check failed: %s", self._label, e)
                return None
            if not notice:
                return None
            self._spot_notice_at = self.clock()
            self.spot_notice = (
                f"Your {self.offering.instance_type if self.offering else 'AWS'} spot server is "
                "being "
                f"reclaimed by AWS ({notice}). Save your work now: it will be stopped within "
                f"{int(self.spot_grace_seconds)} seconds; your home is synced to storage first."
            )
            self.log.warning(
                "%s: spot interruption notice for %s: %s", self._label, self.instance_id, notice
            )
            record_spot_banner(self.user.name, self.spot_notice)
            self._emit(95, self.spot_notice)
            if self.spot_notice_hook is not None:
                try:
                    result = self.spot_notice_hook(self, self.spot_notice)
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    self.log.exception("%s: spot_notice_hook failed", self._label)
        if self.clock() - self._spot_notice_at >= self.spot_grace_seconds:
            self.log.warning(
                "%s: stopping spot server %s after its interruption notice",
                self._label,
                self.instance_id,
            )
            await self._terminate(self.instance_id)
            return 143
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
            "instance_type": self.offering.instance_type if self.offering else None,
            "region": self.launch_region or self.region,
            "market": "spot" if self.spot else "on-demand",
        }
