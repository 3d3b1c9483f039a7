"""The processes that run beside the hub as JupyterHub managed services.

The meter (``meter``), the course scheduler (``course_scheduler``), the verification runner
(``verification``, with the pure notebook comparison in ``notebook_compare``) and the EC2
reconciler (``ec2_reconcile``).  Each talks to the hub through :mod:`hybridhub.hubapi` only and
never imports a backend.
"""
