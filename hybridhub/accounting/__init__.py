"""The accounting core: what a group may spend, what it spent, and the records behind it.

Database and schema (``db``, ``models``, ``schema``, ``migrations``), the ledger (admission,
metering, release: ``ledger``), GPU allocations, reports, session records (``sessions``),
course rules, trust policy, audit, budget CSV, forecasts, unmet demand and threshold mail.
It imports nothing from ``spawner``, ``hybridhub.web`` or ``hybridhub.services``: what it needs
of an offering it takes as plain data.
"""
