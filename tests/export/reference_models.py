"""The shared tiny checkpoints (tests/fixtures/tiny_models.py) as what the torch reference model's
tests need: a transformers model holding the same weights, the ModelSpec and the weights dict."""

from __future__ import annotations

import functools

import torch
import transformers

from tests.fixtures.tiny_models import ARCHS, TINY, _hf_config, tiny_spec, tiny_weights

ARCHITECTURES = tuple(ARCHS)


def tiny_checkpoint(architecture: str, tied: bool = False, seed: int = 0, rope: dict | None = None):
    """(transformers model in eval mode with eager attention, ModelSpec, weights dict); `rope`:
    rope_parameters for the transformers config only (the ModelSpec stays plain)."""
    weights = tiny_weights(architecture, tied, seed)
    config = _hf_config(architecture, tied, TINY, rope)
    config._attn_implementation = "eager"
    model = getattr(transformers, ARCHS[architecture].hf_class)(config).eval()
    state = {name: torch.from_numpy(array) for name, array in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if tied else set()), (missing, unexpected)
    if tied:
        model.tie_weights()
    return model, tiny_spec(architecture, tied), weights


OBJECTIVE_MASK = 5  # the mask id of the objective tests' tiny model


@functools.cache
def tiny_objective_model():
    """The tiny llama reference model the training-objective tests share (built once)."""
    from ruvdllm_export.reference import DiffusionLM

    _, spec, weights = tiny_checkpoint("llama", tied=False, seed=3)
    return DiffusionLM(spec, weights, mask_token_id=OBJECTIVE_MASK).eval()


def random_tokens(n: int, seed: int) -> torch.Tensor:
    """`n` seeded token ids inside the tiny vocabulary, clear of the special ids."""
    return torch.randint(10, 380, (n,), generator=torch.Generator().manual_seed(seed))
