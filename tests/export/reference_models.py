"""The shared tiny checkpoints (tests/fixtures/tiny_models.py) as what the torch reference model's
tests need: a transformers model holding the same weights, the ModelSpec and the weights dict."""

from __future__ import annotations

import torch
import transformers

from ruvdllm_export.spec import ModelSpec
from tests.fixtures.tiny_models import ARCHS, EOS, RMS_EPS, TINY, _hf_config, tiny_weights

ARCHITECTURES = tuple(ARCHS)


def tiny_spec(architecture: str, tied: bool) -> ModelSpec:
    fixture = ARCHS[architecture]
    return ModelSpec(
        architecture=architecture,
        vocab_size=TINY.vocab_size,
        hidden_size=TINY.hidden_size,
        intermediate_size=TINY.intermediate_size,
        num_layers=TINY.num_layers,
        num_heads=TINY.num_heads,
        num_kv_heads=TINY.num_kv_heads,
        head_dim=TINY.head_dim,
        rms_norm_eps=RMS_EPS,
        rope_theta=fixture.rope_theta,
        max_position=TINY.max_position,
        tie_word_embeddings=tied,
        attention_bias=fixture.attention_bias,
        qk_norm=fixture.qk_norm,
        eos_token_ids=(EOS,),
    )


def tiny_checkpoint(architecture: str, tied: bool = False, seed: int = 0):
    """(transformers model in eval mode with eager attention, ModelSpec, weights dict)."""
    weights = tiny_weights(architecture, tied, seed)
    config = _hf_config(architecture, tied, TINY)
    config._attn_implementation = "eager"
    model = getattr(transformers, ARCHS[architecture].hf_class)(config).eval()
    state = {name: torch.from_numpy(array) for name, array in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if tied else set()), (missing, unexpected)
    if tied:
        model.tie_weights()
    return model, tiny_spec(architecture, tied), weights
