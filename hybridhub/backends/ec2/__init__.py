"""The ``ec2`` backend: a Trainium or Inferentia instance per server, through boto3.

``backend`` (the spawner), ``launch`` (the run_instances parameters and launch errors, pure),
``aws`` (boto3 clients and calls, the cached AMI look-up), ``bootstrap`` (the settings of the server
on the instance, its user-data), ``userdata`` (the boot script), ``spot`` (interruption notices,
their banners and the spot settings), ``secrets`` (the log filter), ``reconcile`` (orphan instances);
tags live in :mod:`hybridhub.tags`.

:class:`Ec2Backend` launches the offering's instance type from the AWS Neuron
Deep Learning AMI (its public SSM parameter, or an explicit AMI id), with IMDSv2
required, a root volume sized for the type, the hub's tags and user-data that
starts ``jupyterhub-singleuser`` (see :mod:`hybridhub.backends.ec2.userdata`).  It waits for
``running``, a private IP and an answering server, reporting each stage on the
spawn page; any failure (capacity, account limits, a type the region lacks, a
boot timeout, the hub giving up) terminates what was launched before the error
reaches the user.  Spot offerings are watched for the two-minute interruption
notice.  Every boto3 call runs in a thread pool, never on the hub's event loop.

The server's API token travels only inside user-data: it is never in a tag, a
log line or an error message (:class:`SecretFilter` also keeps botocore's debug
log of request bodies from showing the user-data).
"""

from hybridhub.backends.ec2.backend import Ec2Backend
from hybridhub.backends.ec2.launch import (
    NEURON_DLAMI_PARAMETER,
    Ec2Fields,
    instance_tags,
    root_volume_size,
    run_instances_params,
)
from hybridhub.backends.ec2.secrets import SecretFilter, secret_filter
from hybridhub.backends.ec2.spot import EventBridgeSpotNotices, spot_banners_for, spot_request_notice
from hybridhub.tags import TAG_HUB, TAG_LAUNCH, TAG_OFFERING, TAG_SERVER, TAG_USER

__all__ = [
    "NEURON_DLAMI_PARAMETER", "TAG_HUB", "TAG_LAUNCH", "TAG_OFFERING", "TAG_SERVER", "TAG_USER",
    "Ec2Backend", "Ec2Fields", "EventBridgeSpotNotices", "SecretFilter", "instance_tags", "root_volume_size",
    "run_instances_params", "secret_filter", "spot_banners_for", "spot_request_notice",
]
