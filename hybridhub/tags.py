"""Names this hub writes on cloud resources (EC2 tags).

Shared by the EC2 backend, which tags what it launches, and its reconciliation hook,
which finds this hub's instances by them.
"""

TAG_USER = "hybridhub:user"
TAG_SERVER = "hybridhub:server"
TAG_HUB = "hybridhub:hub-id"
TAG_OFFERING = "hybridhub:offering"
TAG_LAUNCH = "hybridhub:launch"
