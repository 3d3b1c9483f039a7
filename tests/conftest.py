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

#: Fixtures of the machine-wide test infrastructure: tests using any of them never run at the same time.
SHARED_FIXTURES = {"docker_engines", "backend_factory", "slurm_cluster", "theta_controller"}
#: Modules that use it without those fixtures (the README's commands on a fresh clone serve port 8000).
SHARED_MODULES = {"tests.e2e.test_first_contact"}
SHARED_GROUP = "machine-wide"


def _machine_wide(item) -> bool:
    return bool(SHARED_FIXTURES & set(item.fixturenames) or item.module.__name__ in SHARED_MODULES
                or item.get_closest_marker("docker") or item.get_closest_marker("slurm"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    """Each test's xdist group (read by ``--dist loadgroup``): :data:`SHARED_GROUP`, else its module."""
    for item in items:
        item.add_marker(pytest.mark.xdist_group(SHARED_GROUP if _machine_wide(item) else item.module.__name__))
