"""Spot interruption notices: where they come from, and the banners that tell the user."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol


class Ec2Backend(Protocol):
    """What a notice source uses of the backend: its AWS calls and its log."""

    log: Any

    async def aws(self, service: str, method: str, **kwargs: Any) -> dict: ...

SPOT_MARKED = {"marked-for-termination", "marked-for-stop", "marked-for-hibernation"}

_spot_banners: dict[str, list[str]] = defaultdict(list)


def spot_banners_for(username: str) -> list[str]:
    """Spot interruption warnings for ``username`` (for the hub's banner template variable)."""
    return list(_spot_banners.get(username, ()))


def clear_spot_banners(username: str) -> None:
    """Forget the spot warnings of ``username`` (after their server has gone)."""
    _spot_banners.pop(username, None)


def record_spot_banner(username: str, notice: str) -> None:
    """Remember a spot warning for ``username``'s banner."""
    _spot_banners[username].append(notice)

SpotNoticeSource = Callable[["Ec2Backend", dict], Awaitable[str | None]]


async def spot_request_notice(backend: Ec2Backend, instance: dict) -> str | None:
    """Default notice source: the spot request's status (``marked-for-termination`` etc.).

    AWS sets it when it issues the two-minute warning; one ``DescribeSpotInstanceRequests``
    per poll of a spot server.
    """
    request_id = instance.get("SpotInstanceRequestId")
    if not request_id:
        return None
    resp = await backend.aws(
        "ec2", "describe_spot_instance_requests", SpotInstanceRequestIds=[request_id]
    )
    for req in resp.get("SpotInstanceRequests", []):
        status = req.get("Status", {})
        if status.get("Code") in SPOT_MARKED:
            return status.get("Message") or status["Code"]
    return None


class EventBridgeSpotNotices:
    """Notice source reading an SQS queue fed by an EventBridge rule on
    ``EC2 Spot Instance Interruption Warning`` (one queue for the whole hub).

    ``c.Ec2Backend.spot_notice_source = EventBridgeSpotNotices(queue_url)``.
    Messages are deleted once read and remembered per instance id.
    """

    def __init__(self, queue_url: str, *, max_messages: int = 10):
        self.queue_url = queue_url
        self.max_messages = max_messages
        self.notices: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def __call__(self, backend: Ec2Backend, instance: dict) -> str | None:
        async with self._lock:
            resp = await backend.aws(
                "sqs",
                "receive_message",
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=self.max_messages,
                WaitTimeSeconds=0,
            )
            for msg in resp.get("Messages", []):
                try:
                    event = json.loads(msg["Body"])
                    detail = event.get("detail", {})
                    if event.get("detail-type") == "EC2 Spot Instance Interruption Warning":
                        self.notices[detail["instance-id"]] = (
                            f"AWS will {detail.get('instance-action', 'terminate')} this spot "
                            f"instance at {event.get('time', 'in two minutes')}"
                        )
                except (ValueError, KeyError, TypeError):
                    backend.log.warning(
                        "Ignoring malformed spot notice message %s", msg.get("MessageId")
                    )
                await backend.aws(
                    "sqs",
                    "delete_message",
                    QueueUrl=self.queue_url,
                    ReceiptHandle=msg["ReceiptHandle"],
                )
        return self.notices.get(instance.get("InstanceId", ""))

