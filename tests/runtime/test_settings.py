from dataclasses import fields

import pytest

from runtime.dgr import DgrConfig
from runtime.settings import INPUTS, GenerationSettings, inputs_of, resolve, settings_from
from ruvdllm.errors import RuvdllmError
from tests.runtime.toy_backend import TOY_CONFIG


def test_defaults_resolve_to_one_token_per_step():
    plan = resolve(GenerationSettings(length=10), TOY_CONFIG, 3)
    assert (plan.span, plan.steps) == (TOY_CONFIG.block_size, TOY_CONFIG.block_size)
    plan = resolve(GenerationSettings(sampler="mdlm", length=10, steps=5), TOY_CONFIG, 3)
    assert (plan.span, plan.steps) == (10, 5)
    plan = resolve(GenerationSettings(length=3, block_size=64), TOY_CONFIG, 3)
    assert plan.span == 3  # a block longer than the generation is just the generation


@pytest.mark.parametrize(
    "settings, prompt, message",
    [
        (GenerationSettings(), 0, "prompt: empty"),
        (GenerationSettings(length=500), 20, "exceed the model's context of 512"),
        (GenerationSettings(sampler="gibbs"), 3, "sampler 'gibbs': unknown"),
        (GenerationSettings(decoding="greedy"), 3, "decoding 'greedy'"),
        (GenerationSettings(schedule="sigmoid"), 3, "schedule 'sigmoid'"),
        (GenerationSettings(block_size=0), 3, "block size 0: out of range"),
        (GenerationSettings(block_size=600), 3, r"block size 600: out of range 1\.\.512"),
        (GenerationSettings(block_size=4, steps=5), 3, r"steps 5: out of range 1\.\.4"),
        (GenerationSettings(sampler="mdlm", length=8, steps=0), 3, "steps 0"),
        (GenerationSettings(length=0), 3, "length 0"),
        (GenerationSettings(threshold=1.5), 3, "threshold"),
        (GenerationSettings(entropy_bound=-0.1), 3, "entropy bound -0.1"),
        (GenerationSettings(entropy_bound=float("nan")), 3, "entropy bound nan"),
        (GenerationSettings(order="random"), 3, "order 'random': unknown"),
        (GenerationSettings(temperature=-1), 3, "temperature"),
        (GenerationSettings(top_k=-1), 3, "top-k"),
        (GenerationSettings(top_p=0.0), 3, "top-p"),
    ],
)
def test_bad_settings_name_the_problem(settings, prompt, message):
    with pytest.raises(RuvdllmError, match=message):
        resolve(settings, TOY_CONFIG, prompt)


def test_user_input_maps_onto_the_fields_by_name():
    assert set(INPUTS) == {f.name for f in fields(GenerationSettings)} - {"dgr_config", "drafting"} | {
        "dgr_strategy"
    }
    settings = settings_from({"length": 12, "steps": None, "talora": False, "dgr_strategy": "entropy"})
    assert settings == GenerationSettings(length=12, talora=False, dgr_config=DgrConfig(strategy="entropy"))
    base = GenerationSettings(length=5, dgr_config=DgrConfig(strategy="adaptive", budget=2))
    over = settings_from({"temperature": 0.5, "dgr_strategy": "entropy"}, base)
    assert over.length == 5 and over.temperature == 0.5  # None or absent keeps the base's value
    assert over.dgr_config == DgrConfig(strategy="entropy", budget=2)  # only the strategy is a user's
    assert inputs_of({"seed": 1, "chat": True, "top_k": 3}) == {"top_k": 3}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"colour": "blue", "length": 3}, "settings: unknown colour"),
        ({"dgr_config": DgrConfig()}, "settings: unknown dgr_config"),
        ({"dgr_strategy": "always"}, "DGR strategy 'always': unknown"),
    ],
)
def test_bad_input_is_named(values, message):
    with pytest.raises(RuvdllmError, match=message):
        settings_from(values)
