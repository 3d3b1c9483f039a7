"""The EC2 backend's AWS calls: cached boto3 clients, every call in a thread pool (never on the hub's
event loop), and the cached look-ups of a launch (AMI id, root device, whether a type is offered)."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any as TAny

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError, WaiterError

from hybridhub.backends.ec2.launch import described_instances, error_code
from hybridhub.errors import user_error
from hybridhub.tags import TAG_LAUNCH

_executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="hybridhub-ec2")
_clients: dict[tuple, TAny] = {}
_clients_lock = threading.Lock()
_ami_cache: dict[tuple[str, str, str], tuple[float, str]] = {}
_offered_cache: dict[tuple[str, str, str], tuple[float, bool]] = {}
_root_devices: dict[tuple[str, str, str], str] = {}  # an AMI's root device never changes


class AwsCalls:
    """The AWS side of :class:`~hybridhub.backends.ec2.Ec2Backend` (whose traits it reads: ``region``,
    ``endpoint_url``, ``aws_profile``, ``boto_max_attempts``, the AMI and waiter settings)."""

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

    async def _terminate(self, instance_id: str, *, wait: bool = True) -> None:
        try:
            await self.aws("ec2", "terminate_instances", InstanceIds=[instance_id])
        except ClientError as e:
            if error_code(e) == "InvalidInstanceID.NotFound":
                return
            raise
        if wait:
            await self._wait("instance_terminated", instance_id)
