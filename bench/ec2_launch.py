"""Hub-side cost of an EC2 launch on a moto server: time and AWS API calls (boot excluded).

Measures, in the same run and interleaved, (a) ``Ec2Backend.start()`` to its return
(AMI lookup, type check, RunInstances, DescribeInstances until running with an IP,
the readiness probe answered by a local stand-in) and ``stop()`` (terminate and its
waiter), and (b) a baseline of the bare calls any launcher makes: RunInstances with
the same parameters plus one DescribeInstances, then TerminateInstances plus one
DescribeInstances.  API calls are counted with botocore's ``before-call`` event and
listed per launch.  Prints medians, calls and the ratios to the baseline.

    .venv/bin/python bench/ec2_launch.py [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
os.environ.update(
    AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
)
os.environ.pop("AWS_PROFILE", None)

from moto.server import ThreadedMotoServer  # noqa: E402

from hybridhub.backends import ec2 as ec2mod  # noqa: E402
from hybridhub.catalog import load_catalog  # noqa: E402
from tests.fixtures.moto import (  # noqa: E402
    EC2_TEST_CATALOG,
    AnsweringServer,
    FaultProxy,
    Moto,
    fast_traits,
    make_backend,
)


class CallCounter:
    """Counts AWS operations through botocore's ``before-call`` event."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, event_name: str, **kwargs):
        self.calls.append(event_name.split(".", 1)[1])  # "ec2.RunInstances"

    def attach(self, client):
        client.meta.events.register("before-call", self)

    def take(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main(runs: int) -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    proxy = FaultProxy(f"http://{host}:{port}")  # not used for faults: direct URL below
    moto = Moto(server, proxy)
    moto.url = moto.direct_url
    answering = AnsweringServer()
    moto.seed_parameter(ec2mod.NEURON_DLAMI_PARAMETER, moto.image_id())
    catalog = load_catalog(EC2_TEST_CATALOG)
    traits = {**fast_traits(moto, answering.port), "ami_cache_seconds": 3600.0}

    counter = CallCounter()
    probe = make_backend(catalog, traits)
    counter.attach(probe.client("ec2"))
    counter.attach(probe.client("ssm"))
    bare = moto.client("ec2")
    counter.attach(bare)
    user_data = probe.user_data()  # same size of request body as the real launch
    counter.take()

    def baseline_launch() -> str:
        r = bare.run_instances(
            ImageId=moto.image_id(),
            InstanceType="trn1.2xlarge",
            MinCount=1,
            MaxCount=1,
            UserData=user_data,
        )
        iid = r["Instances"][0]["InstanceId"]
        bare.describe_instances(InstanceIds=[iid])
        return iid

    def baseline_stop(iid: str) -> None:
        bare.terminate_instances(InstanceIds=[iid])
        bare.describe_instances(InstanceIds=[iid])

    hub_launch, hub_stop, base_launch, base_stop = [], [], [], []
    launch_calls: list[list[str]] = []
    stop_calls: list[list[str]] = []
    base_calls: list[list[str]] = []
    for i in range(runs + 1):  # the first round warms clients, caches and moto; not counted
        b = make_backend(catalog, traits, username=f"u{i}")
        t0 = time.perf_counter()
        await b.start()
        t1 = time.perf_counter()
        lc = counter.take()
        await b.stop()
        t2 = time.perf_counter()
        sc = counter.take()
        t3 = time.perf_counter()
        iid = await asyncio.to_thread(baseline_launch)
        t4 = time.perf_counter()
        await asyncio.to_thread(baseline_stop, iid)
        t5 = time.perf_counter()
        bc = counter.take()
        if i == 0:
            cold = (t1 - t0, lc)
            continue
        hub_launch.append(t1 - t0)
        hub_stop.append(t2 - t1)
        base_launch.append(t4 - t3)
        base_stop.append(t5 - t4)
        launch_calls.append(lc)
        stop_calls.append(sc)
        base_calls.append(bc)

    def ms(x: float) -> str:
        return f"{x * 1000:7.1f} ms"

    def row(label: str, values: list[float]) -> None:
        print(f"  {label:<22}{ms(statistics.median(values))} ({ms(pct(values, 0.9))})")

    med = statistics.median
    print(f"EC2 launch on moto, {runs} runs (+1 cold), boot excluded; medians (p90)")
    print(f"  cold first launch     {ms(cold[0])}  calls: {', '.join(cold[1])}")
    row("hub launch (start)", hub_launch)
    row("baseline launch", base_launch)
    row("hub stop (+ waiter)", hub_stop)
    row("baseline stop", base_stop)
    print(f"  launch ratio          {med(hub_launch) / med(base_launch):.2f}x")
    print(f"  stop ratio            {med(hub_stop) / med(base_stop):.2f}x")
    n_launch = statistics.median(len(c) for c in launch_calls)
    n_stop = statistics.median(len(c) for c in stop_calls)
    n_base = statistics.median(len(c) for c in base_calls)
    print(f"  AWS calls per launch  {n_launch:g}: {dict(Counter(launch_calls[-1]))}")
    print(f"  AWS calls per stop    {n_stop:g}: {dict(Counter(stop_calls[-1]))}")
    print(f"  baseline calls        {n_base:g}: {dict(Counter(base_calls[-1]))}")
    print(f"  calls ratio           {(n_launch + n_stop) / n_base:.2f}x (launch+stop vs baseline)")
    answering.close()
    server.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    asyncio.run(main(ap.parse_args().runs))
