"""The EC2 backend's reconciliation hook against moto: orphans terminated, in-flight launches kept,
known servers whose instance is gone reported (the runner stops them through the hub)."""

from __future__ import annotations

from traitlets.config import Config

from hybridhub.backends.base import KnownServer
from hybridhub.backends.ec2 import TAG_HUB, Ec2Backend
from hybridhub.backends.ec2.reconcile import gone_servers, orphan_instances


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


def config(moto, **traits) -> Config:
    c = Config()
    for name, value in {"hub_id": "test-hub", "region": "us-east-1", "endpoint_url": moto.url, **traits}.items():
        setattr(c.Ec2Backend, name, value)
    return c


def server(user, instance_id=None, region="us-east-1", pending=None, name=""):
    state = {"instance_id": instance_id, "region": region} if instance_id else {}
    return KnownServer(user, name, state, pending)


async def test_orphans_terminated_known_and_in_flight_kept(moto):
    known = launch(moto, "alice")
    orphan = launch(moto, "bob")
    in_flight = launch(moto, "carol", "big")
    other_hub = launch(moto, "dave", hub_id="another-hub")
    hub = [
        server("alice", known),
        server("carol", pending="spawn", name="big"),  # run_instances answered, state not yet
    ]
    report = await Ec2Backend.reconcile(hub, config(moto))
    assert report.removed == [orphan]
    assert report.kept == [in_flight]
    alive = {i["InstanceId"] for i in moto.instances()}
    assert alive == {known, in_flight, other_hub}
    assert report.gone == []


async def test_servers_whose_instance_is_gone_are_reported(moto):
    gone = launch(moto, "alice")
    moto.client("ec2").terminate_instances(InstanceIds=[gone])
    hub = [
        server("alice", gone),
        server("bob", "i-0000000000000dead"),
        server("carol", "i-00000000000000eu", region="eu-west-1"),  # another region
        server("dave"),  # no instance (yet)
    ]
    report = await Ec2Backend.reconcile(hub, config(moto))
    assert report.gone == [("alice", ""), ("bob", "")]
    assert report.removed == []


async def test_stopped_instances_kept_in_stop_mode(moto):
    stopped = launch(moto, "alice", state="stopped")
    report = await Ec2Backend.reconcile([], config(moto, shutdown_action="stop"))
    assert report.removed == []
    report = await Ec2Backend.reconcile([], config(moto))
    assert report.removed == [stopped]


def test_orphans_and_gone_servers_are_pure():
    def inst(iid, user, state="running"):
        return {"InstanceId": iid, "State": {"Name": state},
                "Tags": [{"Key": "hybridhub:user", "Value": user}, {"Key": "hybridhub:server", "Value": ""}]}

    instances = [inst("i-1", "alice"), inst("i-2", "bob"), inst("i-3", "carol", "stopped")]
    known = [server("alice", "i-1"), server("bob", pending="spawn"), server("dave", "i-9", pending="stop")]
    assert orphan_instances(instances, known) == (["i-3"], ["i-2"])
    assert orphan_instances(instances, known, "stop") == ([], ["i-2"])
    assert gone_servers(instances, known, "us-east-1") == []  # dave's stop is pending: the hub is on it
    assert gone_servers(instances, [server("erin", "i-7")], "us-east-1") == [("erin", "")]
