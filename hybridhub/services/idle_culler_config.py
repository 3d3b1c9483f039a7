"""jupyterhub-idle-culler's config file as hybridhub runs it (``--config=<this file>``).

The culler asks the portal about each server's accelerators before its own rule
(:func:`hybridhub.services.idle_culler.cull_arbiter`).
"""

from hybridhub.services.idle_culler import cull_arbiter

c = get_config()  # noqa: F821  (provided by traitlets when the culler loads this file)
c.IdleCuller.cull_arbiter_hook = cull_arbiter
