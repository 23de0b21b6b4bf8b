import shutil

import pytest

from tests.runtime.tiny_artifact import make_tiny_artifact


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny exported model, built once per session; tests that modify it copy it first."""
    return make_tiny_artifact(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_switch_model_dir(tmp_path_factory):
    """The tiny model with a random conversion adapter and its per-row switch."""
    return make_tiny_artifact(tmp_path_factory.mktemp("tiny-switch") / "model", conversion_adapter=True)


@pytest.fixture(scope="session")
def tiny_switchless_model_dir(tmp_path_factory):
    """The tiny model with a conversion adapter folded in without the switch (--no-adapter-switch)."""
    return make_tiny_artifact(
        tmp_path_factory.mktemp("tiny-switchless") / "model", conversion_adapter=True, adapter_switch=False
    )


@pytest.fixture
def tiny_model_copy(tiny_model_dir, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_model_dir, target)
    return target


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Keep the verification record and default-model cache out of the user's cache."""
    monkeypatch.setenv("RUVDLLM_CACHE", str(tmp_path / "cache"))
