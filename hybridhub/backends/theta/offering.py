"""The ``theta`` backend's offering fields, names and marker (pure, no network)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from hybridhub.catalog import CatalogError

RESOURCE_PATTERN = r"^[A-Za-z0-9_./:-]{1,200}$"


@dataclass(frozen=True)
class ThetaFields:
    """What an offering of the ``theta`` backend names in the catalog."""

    resource_id: str = field(metadata={
        "help": "Theta GPU resource id from gpu-resources, e.g. community_node/1", "pattern": RESOURCE_PATTERN})
    deployment_template_id: str = field(metadata={
        "help": "GPU Node template id from gpu-deployment-templates", "pattern": RESOURCE_PATTERN})
    max_price_per_hour_usd: float | None = field(default=None, metadata={
        "help": "price ceiling in USD per hour sent with every launch; required for a community GPU"})
    hosted: bool = field(default=False, metadata={
        "help": "a hosted GPU (A100/H100/H200) rather than a community node; community nodes are untrusted"})
    region: str | None = field(default=None, metadata={
        "help": "region of a hosted resource offered in several", "pattern": r"^[A-Za-z0-9_.-]{1,64}$"})
    container_image: str | None = field(default=None, metadata={
        "help": "image allowed by the template (default: the offering's image)"})


def check_fields(fields: ThetaFields, image: str, key) -> None:
    """Refuse what Theta would refuse: a community offering without a price ceiling, no image."""
    if not fields.hosted and not (fields.max_price_per_hour_usd and fields.max_price_per_hour_usd > 0):
        raise CatalogError(key("max_price_per_hour_usd"), "a community Theta GPU needs a price ceiling above 0")
    if fields.max_price_per_hour_usd is not None and fields.max_price_per_hour_usd <= 0:
        raise CatalogError(key("max_price_per_hour_usd"), "must be above 0")
    if not (fields.container_image or image):
        raise CatalogError(key("container_image"), "a Theta offering needs an image the template allows")


def marker(hub_id: str) -> str:
    """The prefix of every deployment name this hub creates (8 characters: ``hh`` and a hash of the id)."""
    return "hh" + hashlib.sha256(hub_id.encode()).hexdigest()[:6]


def launch_name(hub_id: str) -> str:
    """A fresh deployment name: this hub's marker and 12 random hex digits (Theta allows 20 alphanumerics)."""
    return marker(hub_id) + secrets.token_hex(6)


def display_name(user: str, server: str) -> str:
    """The deployment's display name: whose server it is (no secret), at most 100 characters."""
    return f"hybridhub {user}/{server}"[:100]
