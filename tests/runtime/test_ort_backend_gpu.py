"""The CUDA execution provider gives the CPU provider's tokens (needs onnxruntime-gpu and a GPU:
run with --run-gpu)."""

import random

import pytest

from runtime import artifact
from runtime.generate import default_control, generate
from runtime.ort_backend import OrtBackend, OrtOptions, cuda_available
from runtime.settings import GenerationSettings
from tests.runtime.tiny_artifact import random_bank

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("sampler", ["bd3lm", "mdlm"])
def test_cuda_matches_cpu(tiny_model_dir, sampler):
    if not cuda_available():
        pytest.fail("onnxruntime has no CUDA execution provider: pip install onnxruntime-gpu")
    config = artifact.load_config(tiny_model_dir)
    bank = random_bank(config, seed=1)
    settings = GenerationSettings(sampler=sampler, length=12, stop_at_eos=False)
    tokens = {}
    for device in ("cpu", "cuda"):
        backend = OrtBackend(tiny_model_dir / artifact.GRAPH_NAME, config, OrtOptions(device=device), bank)
        assert backend.device == device
        control = default_control(backend, bank.talora_config())
        tokens[device] = generate(backend, [5, 6, 7, 8], settings, random.Random(0), control).tokens
    assert tokens["cuda"] == tokens["cpu"]
