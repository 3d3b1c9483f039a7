"""The whole schema: importing this registers every table hybridhub owns on ``Base.metadata``.

Models live beside the code that uses them (allocations, audit, course_model, demand, mail,
provenance, reports); alembic's environment and the schema tests import this module, so
the migrations are always compared with all of them.
"""

from hybridhub.accounting import (  # noqa: F401  (registers their tables)
    allocations,
    audit,
    course_model,
    demand,
    mail,
    provider_bills,
    reports,
    sessions,
    utilisation,
)
from hybridhub.accounting.models import Base

metadata = Base.metadata
