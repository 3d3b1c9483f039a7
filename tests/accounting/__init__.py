"""The accounting core: ledger, units, schema, reports, course rules, session records."""
