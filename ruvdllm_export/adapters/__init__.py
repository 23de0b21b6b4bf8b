"""Adapters shipped inside the package, so that the default model needs no training on a
user's machine.

    DEFAULT_ADAPTER   smollm2-135m-bd3lm.safetensors: the AR -> diffusion conversion adapter of
                      SmolLM2-135M-Instruct (BD3LM, block 8), written by `ruvdllm convert` and
                      stored as float16 (convert/adapter_file.py; how far it was trained:
                      docs/conversion.md). `ruvdllm export --adapter DEFAULT_ADAPTER` bakes it in.
    DEFAULT_BANKS     smollm2-135m-talora/: the TALoRA banks (fine / domain / coarse, rank 4 on
                      q_proj and v_proj) trained over that adapter by `ruvdllm train-banks`, in
                      the runtime's bank format: `ruvdllm generate --bank DEFAULT_BANKS` or
                      `ruvdllm export --banks DEFAULT_BANKS`. Not in the default model: they
                      measured worse in generation than the adapter alone (docs/conversion.md).
    DEFAULT_ANSWER_STORE  smollm2-135m-answers.ngrams: the answer store (runtime/answer_store.py)
                      of SmolLM2-135M-Instruct's own answers to the train split of the distillation
                      prompts (`ruvdllm distill store`; docs/conversion.md). The default model ships
                      it: the verified sampler drafts from it where prompt lookup finds nothing.
"""

from pathlib import Path

DEFAULT_ADAPTER = Path(__file__).with_name("smollm2-135m-bd3lm.safetensors")
DEFAULT_BANKS = Path(__file__).with_name("smollm2-135m-talora")
DEFAULT_ANSWER_STORE = Path(__file__).with_name("smollm2-135m-answers.ngrams")
