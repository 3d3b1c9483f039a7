"""What a launch asks of EC2, as pure functions (no AWS call): the run_instances parameters, the
instance's tags and root volume, and the user-facing error for a refused launch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any as TAny

from botocore.exceptions import ClientError

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


@dataclass(frozen=True)
class Ec2Fields:
    """An EC2 offering's own catalog keys (:attr:`Ec2Backend.offering_fields`)."""

    instance_type: str = field(metadata={"help": "the EC2 instance type launched (trn1.2xlarge)",
                                         "pattern": r"[a-z0-9-]+\.[a-z0-9-]+"})
    spot: bool = field(default=False, metadata={"help": "launch a one-time spot instance"})


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


def root_volume(device_name: str, size_gb: int, volume_type: str) -> dict[str, TAny]:
    """The root volume's block device mapping: encrypted, deleted with the instance."""
    return {
        "DeviceName": device_name,
        "Ebs": {
            "VolumeSize": size_gb,
            "VolumeType": volume_type,
            "DeleteOnTermination": True,
            "Encrypted": True,
        },
    }


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
        "BlockDeviceMappings": [root_volume(root_device_name, root_volume_gb, root_volume_type)],
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
