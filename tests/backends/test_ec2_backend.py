"""Ec2Backend against a real moto server: launch, progress, failures, stop, spot, secrets."""

from __future__ import annotations

import asyncio
import base64
import logging

import pytest
from tornado import web
from traitlets import TraitError

from hybridhub.backends.ec2 import (
    NEURON_DLAMI_PARAMETER,
    TAG_HUB,
    TAG_SERVER,
    TAG_USER,
    Ec2Backend,
    EventBridgeSpotNotices,
    instance_tags,
    root_volume_size,
    run_instances_params,
    spot_banners_for,
    spot_request_notice,
)
from hybridhub.backends.ec2 import aws as ec2aws


def user_data_of(moto, instance_id: str) -> str:
    attr = moto.client("ec2").describe_instance_attribute(
        InstanceId=instance_id, Attribute="userData"
    )
    return base64.b64decode(attr["UserData"]["Value"]).decode()


def volume_sizes(moto, instance_id: str) -> list[int]:
    vols = moto.client("ec2").describe_volumes(
        Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}]
    )["Volumes"]
    return [v["Size"] for v in vols]


# ------------------------------------------------------------------ pure parts


def test_run_instances_params_imdsv2_volume_spot_profile():
    tags = instance_tags("hub1", "alice", "gpu", "aws/trn1", "hh-x")
    p = run_instances_params(
        image_id="ami-1",
        instance_type="trn1.32xlarge",
        subnet_id="subnet-1",
        security_group_ids=["sg-1"],
        root_device_name="/dev/sda1",
        root_volume_gb=root_volume_size("trn1.32xlarge", {}, 100),
        root_volume_type="gp3",
        user_data="#!/bin/bash",
        tags=tags,
        client_token="tok",
        spot=True,
        instance_profile="arn:aws:iam::1:instance-profile/hh",
    )
    assert p["MetadataOptions"]["HttpTokens"] == "required"
    assert p["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 512
    assert p["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] is True
    assert p["InstanceMarketOptions"]["MarketType"] == "spot"
    assert p["IamInstanceProfile"] == {"Arn": "arn:aws:iam::1:instance-profile/hh"}
    assert {t["Key"]: t["Value"] for t in tags}[TAG_HUB] == "hub1"
    q = run_instances_params(
        image_id="ami-1",
        instance_type="inf2.xlarge",
        subnet_id="",
        security_group_ids=[],
        root_device_name="/dev/xvda",
        root_volume_gb=root_volume_size("inf2.xlarge", {"inf2.xlarge": 96}, 100),
        root_volume_type="gp3",
        user_data="x",
        tags=tags,
        client_token="t",
        instance_profile="hh-profile",
    )
    assert "SubnetId" not in q and "InstanceMarketOptions" not in q
    assert q["IamInstanceProfile"] == {"Name": "hh-profile"}
    assert q["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 96


def test_trainium_root_volume_below_512_is_a_config_error():
    with pytest.raises(TraitError, match=r"root_volume_gb\['trn1'\].*512"):
        Ec2Backend(root_volume_gb={"trn1": 100})
    assert root_volume_size("trn2.48xlarge", {"trn2.48xlarge": 2048}, 100) == 2048
    assert root_volume_size("trn1.2xlarge", {}, 100) == 512


# ------------------------------------------------------------------ launch on moto


async def test_launch_poll_stop(moto, ec2_factory):
    sg = moto.client("ec2").create_security_group(GroupName="hh-test", Description="t")["GroupId"]
    subnet = moto.client("ec2").describe_subnets()["Subnets"][0]["SubnetId"]
    b = ec2_factory(
        "alice",
        "aws/trn1",
        security_group_ids=[sg],
        subnet_ids=[subnet],
        extra_tags={"cost-center": "ml"},
    )
    events = []

    async def watch():
        async for e in b.progress():
            events.append(e)

    watcher = asyncio.ensure_future(b.progress().__anext__())  # progress may start before start()
    watcher.cancel()
    host, port = await asyncio.wait_for(b.start(), 20)
    await watch()
    assert (host, port) == ("127.0.0.1", ec2_factory.fast["notebook_port"])
    [inst] = moto.instances(tags={TAG_USER: "alice"})
    assert inst["InstanceId"] == b.instance_id
    assert inst["InstanceType"] == "trn1.2xlarge"
    assert inst["SubnetId"] == subnet
    assert [g["GroupId"] for g in inst["SecurityGroups"]] == [sg]
    assert inst["MetadataOptions"]["HttpTokens"] == "required"
    assert inst["ImageId"] == moto.image_id()
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags[TAG_HUB] == "test-hub" and tags[TAG_USER] == "alice" and tags[TAG_SERVER] == ""
    assert tags["cost-center"] == "ml"
    assert b.api_token not in str(tags)
    assert volume_sizes(moto, b.instance_id) == [512]
    ud = user_data_of(moto, b.instance_id)
    assert ud.startswith("#!/bin/bash") and b.api_token in ud
    assert "JUPYTERHUB_API_URL=http://127.0.0.1:8081/hub/api" in ud
    assert "HYBRIDHUB_INSTANCE_TYPE=trn1.2xlarge" in ud
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and progress[-1] == 90
    messages = " | ".join(e["message"] for e in events)
    assert "Requesting a trn1.2xlarge" in messages and "running at" in messages
    assert "answering" in messages

    state = b.get_state()
    assert state["instance_id"] == b.instance_id and state["region"] == "us-east-1"
    again = ec2_factory("alice", "aws/trn1")
    again.load_state(state)
    assert await again.poll() is None
    await again.stop()
    assert moto.instances(tags={TAG_USER: "alice"}) == []
    assert await again.poll() == 0


async def test_explicit_ami_overrides_ssm(moto, ec2_factory):
    images = moto.client("ec2").describe_images(Owners=["amazon"])["Images"]
    other = sorted(i["ImageId"] for i in images if i.get("RootDeviceName"))[-1]
    b = ec2_factory(ami_id=other, ami_ssm_parameter="/hybridhub/missing")
    await b.start()
    assert moto.instances()[0]["ImageId"] == other
    await b.stop()


async def test_ami_parameter_name_is_configurable(moto, ec2_factory):
    moto.seed_parameter("/lab/neuron-ami", moto.image_id())
    b = ec2_factory(ami_ssm_parameter="/lab/neuron-ami")
    await b.start()
    assert moto.instances()[0]["ImageId"] == moto.image_id()
    await b.stop()


async def test_missing_ami_parameter_is_a_clear_error(moto, ec2_factory):
    b = ec2_factory(ami_ssm_parameter="/hybridhub/not-there")
    with pytest.raises(web.HTTPError) as exc:
        await b.start()
    assert exc.value.status_code == 503
    assert "machine image" in exc.value.jupyterhub_message
    assert moto.instances() == []


# ------------------------------------------------------------------ failures leave nothing behind


async def test_capacity_shortage_is_429_with_retry_after(moto, ec2_factory):
    moto.fail(
        "RunInstances",
        "InsufficientInstanceCapacity",
        "We currently do not have sufficient trn1.2xlarge capacity in us-east-1a.",
        status=500,
    )
    b = ec2_factory(capacity_retry_after=120)
    with pytest.raises(web.HTTPError) as exc:
        await b.start()
    err = exc.value
    assert err.status_code == 429
    assert err.headers == {"Retry-After": "120"}
    assert "no trn1.2xlarge capacity" in err.jupyterhub_message
    assert b.api_token not in err.jupyterhub_message
    assert moto.instances() == []
    assert b.get_state().get("instance_id") is None


async def test_capacity_in_one_subnet_tries_the_next(moto, ec2_factory):
    subnets = [s["SubnetId"] for s in moto.client("ec2").describe_subnets()["Subnets"]][:2]
    moto.fail("RunInstances", "InsufficientInstanceCapacity", status=500)
    b = ec2_factory(subnet_ids=subnets)
    await b.start()
    [inst] = moto.instances()
    assert inst["SubnetId"] == subnets[1]
    await b.stop()


@pytest.mark.parametrize("code", ["InstanceLimitExceeded", "VcpuLimitExceeded"])
async def test_account_limit_is_a_clear_error(moto, ec2_factory, code):
    moto.fail("RunInstances", code, "You have requested more vCPU capacity than your current limit")
    b = ec2_factory()
    with pytest.raises(web.HTTPError) as exc:
        await b.start()
    assert exc.value.status_code == 503
    assert "limit" in exc.value.jupyterhub_message and code in exc.value.jupyterhub_message
    assert moto.instances() == []


async def test_type_not_in_region(moto, ec2_factory):
    # moto validates instance types (MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION=true)
    b = ec2_factory(offering="aws/bogus", check_type_offered=False)
    with pytest.raises(web.HTTPError) as exc:
        await b.start()
    assert exc.value.status_code == 400
    assert "trn9.2xlarge is not offered in us-east-1" in exc.value.jupyterhub_message
    # with the pre-check, no RunInstances is even sent
    moto.proxy.clear()
    b = ec2_factory(offering="aws/bogus")
    with pytest.raises(web.HTTPError) as exc:
        await b.start()
    assert exc.value.status_code == 400 and "RunInstances" not in moto.proxy.seen
    # AWS's own answer for an AZ that lacks the type
    moto.fail(
        "RunInstances", "Unsupported", "Your requested instance type is not supported in us-east-1e"
    )
    b = ec2_factory(offering="aws/inf2")
    with pytest.raises(web.HTTPError) as exc:
        await b.start()
    assert exc.value.status_code == 400 and "inf2.xlarge" in exc.value.jupyterhub_message
    assert moto.instances() == []


async def test_boot_timeout_terminates_the_instance(moto, ec2_factory):
    from tests.fixtures.hub import free_port

    b = ec2_factory(notebook_port=free_port(), server_ready_timeout=0.5)  # nothing answers
    with pytest.raises(web.HTTPError) as exc:
        await b.start()
    assert exc.value.status_code == 504
    assert "terminated" in exc.value.jupyterhub_message
    assert moto.instances() == []
    assert len(moto.instances("terminated")) == 1


async def test_cancelled_start_terminates_the_instance(moto, ec2_factory):
    from tests.fixtures.hub import free_port

    b = ec2_factory(notebook_port=free_port(), server_ready_timeout=60)
    task = asyncio.ensure_future(b.start())
    for _ in range(200):
        await asyncio.sleep(0.05)
        if moto.instances():
            break
    assert moto.instances(), "no instance launched"
    task.cancel()  # what the hub does at start_timeout
    with pytest.raises(asyncio.CancelledError):
        await task
    assert moto.instances() == []


async def test_unexpected_aws_error_is_wrapped(moto, ec2_factory):
    moto.fail("DescribeInstances", "InternalError", "boom", status=400)
    b = ec2_factory()
    with pytest.raises(web.HTTPError) as exc:
        await b.start()
    assert (
        exc.value.status_code == 502 and "nothing was left running" in exc.value.jupyterhub_message
    )
    assert moto.instances() == []


# ------------------------------------------------------------------ the token stays secret


async def test_token_not_in_tags_logs_or_errors(moto, ec2_factory, caplog):
    caplog.set_level(logging.DEBUG)  # botocore's debug log includes request bodies
    b = ec2_factory()
    b.log = logging.getLogger("test.ec2")
    await b.start()
    await b.stop()
    moto.fail("RunInstances", "InsufficientInstanceCapacity", status=500)
    failing = ec2_factory()
    failing.log = logging.getLogger("test.ec2")
    with pytest.raises(web.HTTPError) as exc:
        await failing.start()
    hub_log = caplog.text  # everything the launches logged, botocore's debug output included
    caplog.set_level(logging.WARNING)  # our own look at the user-data below is not the hub's log
    ud_b64 = base64.b64encode(user_data_of(moto, b.instance_id).encode()).decode()
    tags = moto.client("ec2").describe_tags()["Tags"]
    assert "RunInstances" in hub_log  # botocore did log the calls
    for token in (b.api_token, failing.api_token):
        assert token not in hub_log
        assert token not in str(tags)
        assert token not in exc.value.jupyterhub_message and token not in str(exc.value)
    assert ud_b64 not in hub_log and ud_b64[:200] not in hub_log
    assert "[secret]" in hub_log


# ------------------------------------------------------------------ spot


async def test_spot_notice_warns_then_stops(moto, ec2_factory):
    now = [1000.0]
    notices: dict[str, str] = {}
    hooked = []

    async def source(backend, instance):
        return notices.get(instance["InstanceId"])

    b = ec2_factory(
        "bob",
        "aws/trn1-spot",
        spot_notice_source=source,
        spot_grace_seconds=30,
        spot_notice_hook=lambda sp, msg: hooked.append(msg),
    )
    b.clock = lambda: now[0]
    await b.start()
    [inst] = moto.instances()
    assert inst.get("InstanceLifecycle") == "spot"
    assert await b.poll() is None
    notices[b.instance_id] = (
        "instance-action terminate at 2026-11-26T05:14:00Z"  # the simulated notice
    )
    assert await b.poll() is None  # warned, still running for the grace period
    assert hooked and "reclaimed by AWS" in hooked[0] and "Save your work" in hooked[0]
    assert spot_banners_for("bob") == hooked
    assert b._feed.events[-1]["message"] == hooked[0]
    now[0] += 31
    assert await b.poll() == 143  # stopped cleanly: HybridSpawner closes the usage
    assert moto.instances() == []
    assert len(hooked) == 1
    await b.stop()  # the hub's stop afterwards is harmless


async def test_spot_notice_from_eventbridge_queue(moto, ec2_factory):
    import json

    sqs = moto.client("sqs")
    queue_url = sqs.create_queue(QueueName="spot-warnings")["QueueUrl"]
    source = EventBridgeSpotNotices(queue_url)
    b = ec2_factory("bob", "aws/trn1-spot", spot_notice_source=source, spot_grace_seconds=0)
    await b.start()
    assert await b.poll() is None
    event = {
        "version": "0",
        "detail-type": "EC2 Spot Instance Interruption Warning",
        "source": "aws.ec2",
        "time": "2026-11-26T05:14:00Z",
        "detail": {"instance-id": b.instance_id, "instance-action": "terminate"},
    }
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(event))
    assert await b.poll() == 143
    assert "2026-11-26T05:14:00Z" in b.spot_notice
    assert moto.instances() == []
    assert sqs.receive_message(QueueUrl=queue_url).get("Messages") is None


async def test_default_spot_source_ignores_on_demand(moto, ec2_factory):
    b = ec2_factory()
    await b.start()
    assert await spot_request_notice(b, moto.instances()[0]) is None
    await b.stop()


# ------------------------------------------------------------------ stop instead of terminate


async def test_stop_mode_stops_and_restarts_the_same_instance(moto, ec2_factory):
    b = ec2_factory(shutdown_action="stop")
    await b.start()
    first = b.instance_id
    first_token = b.api_token
    await b.stop()
    assert [i["State"]["Name"] for i in moto.instances()] == ["stopped"]
    b.clear_state()
    again = ec2_factory(shutdown_action="stop")
    await again.start()
    assert again.instance_id == first
    assert [i["State"]["Name"] for i in moto.instances()] == ["running"]
    ud = user_data_of(moto, first)
    assert again.api_token in ud and first_token not in ud
    assert "scripts-user, always" in ud
    await again.stop()


async def test_ami_lookup_is_cached(moto, ec2_factory):
    calls = []
    ec2aws._ami_cache.clear()
    b = ec2_factory(ami_cache_seconds=3600)
    b.client("ssm").meta.events.register(
        "before-call.ssm.GetParameter", lambda **kw: calls.append(1)
    )
    assert await b.resolve_ami() == await b.resolve_ami() == moto.image_id()
    assert len(calls) == 1
    ec2aws._ami_cache.clear()


def test_neuron_parameter_default():
    assert Ec2Backend().ami_ssm_parameter == NEURON_DLAMI_PARAMETER


def test_every_ec2_setting_has_help():
    from jupyterhub.spawner import Spawner

    own = set(Ec2Backend.class_traits(config=True)) - set(Spawner.class_traits(config=True))
    assert len(own) > 40
    missing = [n for n in own if not Ec2Backend.class_traits()[n].help]
    assert missing == []
    doc = (__import__("pathlib").Path(__file__).parents[2] / "docs" / "aws.md").read_text()
    assert [n for n in sorted(own) if f"`{n}`" not in doc] == []
