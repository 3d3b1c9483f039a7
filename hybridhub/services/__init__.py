"""The processes that run beside the hub as JupyterHub managed services.

The meter (``meter``), the course scheduler (``course_scheduler``) and the verification runner
(``verification``, with the pure notebook comparison in ``notebook_compare``).  Each talks to the
hub through :mod:`hybridhub.hubapi` only and never imports a backend.
"""
