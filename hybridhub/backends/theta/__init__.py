"""The ``theta`` backend: a Theta EdgeCloud GPU Node (community or hosted) per server.

``client`` (the HTTP client, as Theta's own speaks the contract), ``body`` (every assumption about the
fields inside Theta's answers, and the create request), ``offering`` (the offering fields and the
deployment names carrying this hub's marker), ``ssh`` (the per-launch key pair and the start over SSH),
``launch`` (the steps of a start), ``backend`` (the spawner), ``reconcile`` (orphan deployments).

:class:`ThetaBackend` checks Theta's quote against the offering's price ceiling before anything is
created, creates a deployment with a key pair made for this launch (the private key stays in the hub's
memory), waits for the node, starts ``jupyterhub-singleuser`` over SSH with the server's environment
sent inside that connection, and routes the hub to the node's HTTP endpoint once Jupyter itself
answers.  Stop deletes the deployment.  docs/theta.md says how to point it at a real project.
"""

from hybridhub.backends.theta.backend import ThetaBackend
from hybridhub.backends.theta.body import deployment_body
from hybridhub.backends.theta.client import ThetaClient, ThetaError, ThetaTimeout
from hybridhub.backends.theta.offering import ThetaFields

__all__ = ["ThetaBackend", "ThetaClient", "ThetaError", "ThetaFields", "ThetaTimeout", "deployment_body"]
