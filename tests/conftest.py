"""Opt-in markers: slow, browser, gpu and postgres tests are skipped unless asked for.

Ask with `--run-slow` (etc.) or the environment, `RUVDLLM_TEST=slow,browser`; `.ci/run`
uses the latter so the README's test command stays one line.
"""

import os

import pytest

OPT_IN = ("slow", "browser", "gpu", "postgres")


def pytest_addoption(parser):
    for name in OPT_IN:
        parser.addoption(f"--run-{name}", action="store_true", help=f"run tests marked {name}")


def _asked_for(config, name: str) -> bool:
    from_env = {part.strip() for part in os.environ.get("RUVDLLM_TEST", "").split(",")}
    return config.getoption(f"--run-{name}") or name in from_env or "all" in from_env


def pytest_collection_modifyitems(config, items):
    for name in OPT_IN:
        if _asked_for(config, name):
            continue
        skip = pytest.mark.skip(reason=f"{name} test: run with --run-{name} or RUVDLLM_TEST={name}")
        for item in items:
            if name in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def private_learning_data(tmp_path, monkeypatch):
    """Keep trajectories and the learning config (loop A records by default) out of the user's
    data directory."""
    monkeypatch.setenv("RUVDLLM_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("RUVDLLM_LEARNING_CONFIG", raising=False)
