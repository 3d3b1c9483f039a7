"""Shared fixtures: each concern lives in its own plugin module under tests/fixtures/.

Under pytest-xdist (``scripts/test.sh`` runs ``-n 2 --dist loadgroup``) the tests of the infrastructure the whole
machine shares (the Docker engines and their Swarm, the Slurm cluster, the Theta controller's nodes, the demo
on port 8000) run on one worker, one at a time; every other test runs on the worker of the rest of its module,
so a module-scoped hub starts once.
"""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.env",
    "tests.fixtures.db",
    "tests.fixtures.hub",
    "tests.fixtures.browser",
    "tests.fixtures.docker",
    "tests.fixtures.moto",
    "tests.fixtures.slurm",
    "tests.fixtures.smtp",
    "tests.fixtures.wheel",
]

#: Fixtures of the machine-wide test infrastructure: tests using any of them, directly or through another fixture
#: (``item.fixturenames`` is the closure: the Theta nodes and ``backend_factory`` stand on the engines), never
#: run at the same time.
SHARED_FIXTURES = {"docker_engines", "slurm_cluster"}
#: Modules that use it without those fixtures (the README's commands on a fresh clone serve port 8000).
SHARED_MODULES = {"tests.e2e.test_first_contact"}
SHARED_GROUP = "machine-wide"


def _machine_wide(item) -> bool:
    return bool(SHARED_FIXTURES & set(item.fixturenames) or item.module.__name__ in SHARED_MODULES
                or item.get_closest_marker("docker") or item.get_closest_marker("slurm"))


def pytest_itemcollected(item) -> None:
    """Each test's xdist group (``--dist loadgroup``): :data:`SHARED_GROUP`, else its module.  Marked as
    it is collected, before pytest-xdist's worker reads the groups in ``pytest_collection_modifyitems``."""
    item.add_marker(pytest.mark.xdist_group(SHARED_GROUP if _machine_wide(item) else item.module.__name__))


def pytest_collection_finish(session) -> None:
    """Stop a run whose groups did not take: tests of the machine-wide infrastructure on two workers at once fail
    in ways that look like bugs (pytest 9.2 drops xdist's group suffix silently, pytest-dev/pytest-xdist#1386)."""
    if getattr(session.config.option, "loadgroup", False) and session.items and "@" not in session.items[0].nodeid:
        raise pytest.UsageError("pytest-xdist's --dist loadgroup did not group the tests (its suffix is missing "
                                "from the node ids): install the test extra's pytest (scripts/setup.sh --test)")
