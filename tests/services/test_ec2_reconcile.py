"""The EC2 orphan reconciler against moto: orphans terminated, in-flight launches kept,
hub entries whose instance is gone stopped, orphaned reservations closed."""

from __future__ import annotations

from dataclasses import dataclass, field

from hybridhub.backends.ec2 import TAG_HUB
from hybridhub.services.ec2_reconcile import (
    SERVICE_SCOPES,
    Ec2Reconciler,
    HubServer,
    reconciler_service,
    server_from_model,
)


@dataclass
class FakeHub:
    """An in-memory hub view for the reconciler."""

    known: list[HubServer] = field(default_factory=list)
    stopped: list[tuple[str, str]] = field(default_factory=list)

    async def servers(self):
        return list(self.known)

    async def stop_server(self, user, server):
        self.stopped.append((user, server))


@dataclass
class FakeReservation:
    id: int
    username: str
    server_name: str
    resource_class: str


class FakeAccounting:
    def __init__(self, open_):
        self.open = list(open_)
        self.released = []

    def open_reservations(self):
        return list(self.open)

    def release(self, rid, reason):
        self.released.append((rid, reason))


def launch(moto, user, server="", hub_id="test-hub", state="running"):
    ec2 = moto.client("ec2")
    tags = [
        {"Key": TAG_HUB, "Value": hub_id},
        {"Key": "hybridhub:user", "Value": user},
        {"Key": "hybridhub:server", "Value": server},
    ]
    iid = ec2.run_instances(
        ImageId=moto.image_id(),
        InstanceType="trn1.2xlarge",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )["Instances"][0]["InstanceId"]
    if state == "stopped":
        ec2.stop_instances(InstanceIds=[iid])
    return iid


def reconciler(moto, hub, **kw):
    return Ec2Reconciler(
        hub_id="test-hub", hub_state=hub, region="us-east-1", endpoint_url=moto.url, **kw
    )


async def test_orphans_terminated_known_and_in_flight_kept(moto):
    known = launch(moto, "alice")
    orphan = launch(moto, "bob")
    in_flight = launch(moto, "carol", "big")
    other_hub = launch(moto, "dave", hub_id="another-hub")
    hub = FakeHub(
        [
            HubServer("alice", "", known, "us-east-1", None, True),
            HubServer(
                "carol", "big", None, None, "spawn", False
            ),  # run_instances answered, state not yet
        ]
    )
    report = await reconciler(moto, hub).reconcile_once()
    assert report.terminated == [orphan]
    assert report.kept_in_flight == [in_flight]
    alive = {i["InstanceId"] for i in moto.instances()}
    assert alive == {known, in_flight, other_hub}
    assert hub.stopped == []


async def test_entries_whose_instance_is_gone_are_stopped(moto):
    gone = launch(moto, "alice")
    moto.client("ec2").terminate_instances(InstanceIds=[gone])
    hub = FakeHub(
        [
            HubServer("alice", "", gone, "us-east-1", None, True),
            HubServer("bob", "", "i-0000000000000dead", "us-east-1", None, True),
            HubServer("carol", "", "i-00000000000000eu", "eu-west-1", None, True),  # another region
            HubServer("dave", "", None, None, None, True),  # not an EC2 server
        ]
    )
    report = await reconciler(moto, hub).reconcile_once()
    assert hub.stopped == [("alice", ""), ("bob", "")]
    assert report.terminated == []


async def test_stopped_instances_kept_in_stop_mode(moto):
    stopped = launch(moto, "alice", state="stopped")
    hub = FakeHub([])
    report = await reconciler(moto, hub, shutdown_action="stop").reconcile_once()
    assert report.terminated == []
    report = await reconciler(moto, hub).reconcile_once()
    assert report.terminated == [stopped]


async def test_orphaned_reservations_released(moto):
    acct = FakeAccounting(
        [
            FakeReservation(1, "alice", "", "aws"),
            FakeReservation(2, "bob", "", "aws"),
            FakeReservation(3, "carol", "", "community"),
        ]
    )
    hub = FakeHub([HubServer("alice", "", None, None, "spawn", False)])
    report = await reconciler(moto, hub, accounting=acct, resource_classes=["aws"]).reconcile_once()
    assert report.released == [2]
    assert acct.released == [(2, "reconciled: no server")]


def test_server_from_rest_model():
    model = {
        "pending": None,
        "ready": True,
        "state": {"request": {}, "backend_state": {"instance_id": "i-1", "region": "us-west-2"}},
    }
    s = server_from_model("alice", "", model)
    assert (s.instance_id, s.region, s.ready) == ("i-1", "us-west-2", True)
    assert server_from_model("bob", "x", {"pending": "spawn"}).instance_id is None


def test_service_definition(monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "lab")
    service, role = reconciler_service(
        hub_id="h1",
        region="us-west-2",
        interval=60,
        db_url="sqlite:///x.sqlite",
        resource_classes=["aws"],
    )
    assert service["command"][1:3] == ["-m", "hybridhub.services.ec2_reconcile"]
    assert "--hub-id" in service["command"] and "h1" in service["command"]
    assert service["environment"]["AWS_PROFILE"] == "lab"
    assert role["services"] == [service["name"]] and role["scopes"] == SERVICE_SCOPES
