"""No backend reads the hub's database: what a backend knows of the hub's servers reaches it as
``KnownServer`` lists from the reconciliation runner (hybridhub.spawner.reconcile)."""

from __future__ import annotations

import ast
from pathlib import Path

import hybridhub.backends

BACKENDS = Path(hybridhub.backends.__file__).parent
#: Modules that reach the hub's database: its ORM, the app holding its session, SQL itself.
FORBIDDEN_MODULES = ("jupyterhub.orm", "jupyterhub.app", "sqlalchemy")
#: Attributes through which a spawner reaches the hub's database session or its rows.
FORBIDDEN_ATTRIBUTES = {"db", "orm_spawner", "orm_user", "hub_db"}


def hub_db_uses(source: str) -> list[str]:
    """Each import of a hub-database module and each use of a hub-database attribute in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        found += [f"import {n} (line {node.lineno})" for n in names
                  if any(n == m or n.startswith(f"{m}.") for m in FORBIDDEN_MODULES)]
        if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRIBUTES:
            found.append(f".{node.attr} (line {node.lineno})")
    return found


def test_no_backend_module_reads_the_hub_database():
    uses = {str(p.relative_to(BACKENDS)): hub_db_uses(p.read_text()) for p in sorted(BACKENDS.rglob("*.py"))}
    assert len(uses) > 10  # the shipped backends were found
    assert {path: found for path, found in uses.items() if found} == {}


def test_the_check_finds_what_the_old_reconcilers_did():
    """Before the runner, the docker and slurm reconcilers read ``orm.Spawner`` rows through ``self.db``."""
    old = (
        "def saved(db):\n    from jupyterhub import orm\n    return db.query(orm.Spawner)\n"
        "def loop(self):\n    hub_db = self.db if self.db is not None else self.context.hub_db\n"
    )
    assert hub_db_uses(old) == ["import jupyterhub.orm (line 2)", ".db (line 5)", ".hub_db (line 5)", ".db (line 5)"]
