import pytest

from runtime import artifact
from tests.runtime.tiny_artifact import random_bank


@pytest.fixture
def banked_model_dir(tiny_model_copy):
    """The tiny model with a bank of adapters and 32 DGR patterns in its banks/."""
    config = artifact.load_config(tiny_model_copy)
    random_bank(config, seed=5).save(tiny_model_copy / "banks")
    artifact.write_manifest(tiny_model_copy)
    return tiny_model_copy
