"""The golden test: two implementations of docs/sampling.md — the standard-library runtime on
onnxruntime CPU and the torch reference sampler on the torch model — run a tiny exported model
and must produce the same tokens, step by step: MDLM and BD3LM, low-confidence, threshold and
entropy-bounded decoding in confidence and left-to-right order, greedy and seeded sampling,
without adapters and with a TALoRA + DGR bank.

The model is exported by `export_model` (validated on the way, as every export is) with
MatMulNBits at accuracy_level 0, so the two differ only by float32 summation order; the
reference runs on exactly the weights the graph holds.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from runtime.artifact import GRAPH_NAME, ArtifactConfig, load_config  # noqa: E402
from runtime.banks import Bank  # noqa: E402
from runtime.control import AdapterControl  # noqa: E402
from runtime.dgr import DgrConfig  # noqa: E402
from runtime.generate import generate as runtime_generate  # noqa: E402
from runtime.index import ExactIndex  # noqa: E402
from runtime.ort_backend import OrtBackend, OrtOptions, assemble_numpy  # noqa: E402
from runtime.settings import GenerationSettings  # noqa: E402
from ruvdllm_export.checkpoints import load_checkpoint  # noqa: E402
from ruvdllm_export.export import export_model  # noqa: E402
from ruvdllm_export.onnx_graph import options_for_target, prepare_weights  # noqa: E402
from ruvdllm_export.reference import DiffusionLM  # noqa: E402
from ruvdllm_export.reference.control import Adapters  # noqa: E402
from ruvdllm_export.reference.sampler import SamplingConfig  # noqa: E402
from ruvdllm_export.reference.sampler import generate as reference_generate  # noqa: E402
from tests.fixtures.tiny_models import make_hf_checkpoint  # noqa: E402

torch.set_num_threads(1)
SLOTS, GROUPS, RANK = 5, 3, 2  # 3 TALoRA groups + 2 DGR slots
TARGETS = ("q_proj", "v_proj")  # the export's default adapter targets
PROMPT = [1, 17, 42, 99, 150, 7, 230]
# The tiny random model is unsure (top probabilities ~0.02-0.035 over 384 tokens): this bar makes
# threshold decoding commit several positions on some steps and one on others.
THRESHOLD = 0.028
# Its rows' entropies are near ln 384 = 5.95 nats: this bound admits two positions per step
# (summed entropy minus the largest ~6) but not three (~12).
ENTROPY_BOUND = 8.0
DGR = DgrConfig(strategy="entropy", threshold=0.3, budget=2, neighbours=3)


def tiny_model(directory: Path):
    """(ArtifactConfig, graph path, torch reference) for one tiny LLaMA exported by export_model;
    the reference holds exactly the weights the graph holds (prepare_weights, same options)."""
    checkpoint_dir = make_hf_checkpoint(directory / "hf", "llama", seed=11)
    overrides = dict(accuracy_level=0, top_k=16, adapter_slots=SLOTS, adapter_rank=RANK)
    out = export_model(checkpoint_dir, directory / "model", "cpu", block_size=4, log=None, **overrides)
    config = load_config(out)
    assert config.adapter_targets == TARGETS and config.accuracy_level == 0
    checkpoint = load_checkpoint(checkpoint_dir)
    options = options_for_target("cpu", **overrides)
    weights = prepare_weights(checkpoint.spec, checkpoint.weights, options)
    reference = DiffusionLM(checkpoint.spec, weights, config.mask_token_id, config.top_k)
    return config, out / GRAPH_NAME, reference


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("golden"))


def make_bank(config: ArtifactConfig, shapes: dict, reference: DiffusionLM) -> Bank:
    """Random TALoRA adapters (one per timestep group) and DGR adapters, large enough to change
    tokens; DGR patterns are the reference's own query vectors for the prompt, so retrieval finds
    real neighbours."""
    rng = np.random.default_rng(0)
    bank = Bank.for_model(config, shapes)
    for slot in range(SLOTS):
        factors = {
            target: (
                rng.standard_normal((config.num_layers, fan_in, RANK)).astype(np.float32) / np.sqrt(fan_in),
                rng.standard_normal((config.num_layers, RANK, fan_out)).astype(np.float32),
            )
            for target, (fan_in, fan_out) in shapes.items()
        }
        bank.add_adapter(f"slot{slot}", slot, factors)
    size = len(PROMPT) + 6
    with torch.no_grad():
        out = reference(
            torch.tensor([PROMPT + [config.mask_token_id] * 6]),
            torch.arange(size)[None],
            torch.zeros(1, size, dtype=torch.long),
        )
    queries = out["query"][0, len(PROMPT) :].numpy()
    bank.add_patterns(queries.tolist(), [GROUPS + i % (SLOTS - GROUPS) for i in range(len(queries))])
    return bank


def run_both(model, settings: GenerationSettings, seed: int, with_adapters: bool):
    config, graph_path, reference = model
    backend = OrtBackend(graph_path, config, OrtOptions(device="cpu", intra_op_threads=1))
    if with_adapters:
        bank = make_bank(config, backend.adapter_shapes, reference)
        backend.set_bank(bank)
        index = ExactIndex(config.hidden_size)
        patterns = np.frombuffer(bank.pattern_vectors, np.float32).reshape(-1, config.hidden_size)
        index.add(patterns.tolist(), bank.pattern_slots)
        talora = bank.talora_config()
        control = AdapterControl(SLOTS, GROUPS, config.vocab_size, talora, DGR, index)
        adapters = Adapters(
            bank={
                t: tuple(torch.from_numpy(x) for x in assemble_numpy(bank, t, *shape))
                for t, shape in backend.adapter_shapes.items()
            },
            slots=SLOTS,
            groups=GROUPS,
            talora=talora,
            dgr=DGR,
            patterns=torch.from_numpy(patterns.copy()),
            pattern_slots=torch.tensor(bank.pattern_slots),
        )
    else:
        control, adapters = AdapterControl(SLOTS, GROUPS, config.vocab_size), None
    ours = runtime_generate(backend, PROMPT, settings, random.Random(seed), control)
    theirs = reference_generate(
        reference,
        PROMPT,
        SamplingConfig(
            algorithm=settings.sampler,
            length=settings.length,
            block_size=settings.block_size,
            steps=settings.steps,
            decoding=settings.decoding,
            threshold=settings.threshold,
            entropy_bound=settings.entropy_bound,
            order=settings.order,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            schedule=settings.schedule,
        ),
        random.Random(seed),
        adapters,
        eos_token_ids=config.eos_token_ids,
    )
    return ours, theirs


CASES = [
    ("mdlm", "low-confidence", None, 0.0, "confidence"),
    ("mdlm", "threshold", None, 0.0, "confidence"),
    ("mdlm", "entropy-bounded", None, 0.0, "confidence"),
    ("bd3lm", "low-confidence", 2, 0.0, "confidence"),
    ("bd3lm", "threshold", None, 0.0, "confidence"),
    ("bd3lm", "low-confidence", None, 0.8, "confidence"),
    ("bd3lm", "entropy-bounded", None, 0.0, "confidence"),
    ("bd3lm", "entropy-bounded", None, 0.8, "left-to-right"),
    ("bd3lm", "threshold", None, 0.0, "left-to-right"),
    ("bd3lm", "low-confidence", 2, 0.0, "left-to-right"),
]


@pytest.mark.parametrize("with_adapters", [False, True], ids=["base", "talora+dgr"])
@pytest.mark.parametrize(("sampler", "decoding", "steps", "temperature", "order"), CASES)
def test_runtime_and_reference_produce_the_same_tokens(
    model, sampler, decoding, steps, temperature, order, with_adapters
):
    settings = GenerationSettings(
        sampler=sampler,
        length=12,
        block_size=4,
        steps=steps,
        decoding=decoding,
        threshold=THRESHOLD,
        entropy_bound=ENTROPY_BOUND,
        order=order,
        temperature=temperature,
        top_p=0.9 if temperature else 1.0,
        dgr_config=DGR,
    )
    ours, theirs = run_both(model, settings, seed=5, with_adapters=with_adapters)
    assert ours.tokens == theirs.tokens
    assert [event.tokens for event in ours.trace] == [step.tokens for step in theirs.steps]
    if with_adapters:
        assert [len(e.retrieved) for e in ours.trace] == [len(s.retrieved) for s in theirs.steps]
    # Parallel decoding really happened (left to right, the bank's adapters leave no two
    # neighbours above the threshold, and one token per step is still a valid comparison).
    if decoding != "low-confidence" and not (with_adapters and order == "left-to-right"):
        assert max(len(event.committed) for event in ours.trace) > 1


@pytest.mark.parametrize("sampler", ["mdlm", "bd3lm"])
def test_adapters_change_the_tokens(model, sampler):
    """The golden test would prove little if the bank did nothing: it changes the output, and
    DGR retrieves along the way."""
    settings = GenerationSettings(sampler=sampler, length=12, block_size=4, dgr_config=DGR)
    base, _ = run_both(model, settings, seed=0, with_adapters=False)
    adapted, reference = run_both(model, settings, seed=0, with_adapters=True)
    assert base.tokens != adapted.tokens
    assert any(step.retrieved for step in reference.steps)
