"""Spot interruption notices: where they come from, and the banners that tell the user."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from traitlets import Any as AnyValue
from traitlets import Float, HasTraits


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


class SpotWatch(HasTraits):
    """Watching a spot server for its interruption notice (part of ``Ec2Backend``): the settings, and
    :meth:`_check_spot`, which ``poll()`` calls for a spot instance."""

    spot_notice_source = AnyValue(
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

    spot_notice_hook = AnyValue(
        None,
        help="Callable (spawner, message) run once on a spot notice, e.g. to post a hub banner or "
        "send mail. Whatever it is, the notice is logged and added to spot_banners_for(user).",
    ).tag(config=True)

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
                f"Your {self.fields.instance_type if self.offering else 'AWS'} spot server is "
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
