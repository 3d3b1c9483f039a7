"""The hub's wiring: :func:`add_hybridhub` for any JupyterHub, :func:`configure_hub` for the demo."""

from hybridhub.hub.config import add_hybridhub, configure_hub

__all__ = ["add_hybridhub", "configure_hub"]
