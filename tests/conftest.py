"""Shared fixtures: each concern lives in its own plugin module under tests/fixtures/."""

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
