"""AR -> diffusion conversion: train a LoRA over the frozen (4-bit) base so that the AR model
denoises masked blocks (BD3LM) or whole spans (MDLM) with the shift (docs/conversion.md).

    data.py          texts (plain / JSONL) -> token sequences, held-out split
    distill.py       self-distillation: the AR model's own answers to a prompt set
    objectives.py    MDLM and BD3LM losses over the reference model
    annealing.py     causal -> block-causal / bidirectional attention annealing
    trainer.py       the loop: accumulation, checkpoint/resume, warm start, progress, DDP
    evaluation.py    held-out masked NLL / ELBO and the certainty metrics (accuracy, confidence)
    curve.py         a run's training curve from its log (no torch)
    ar_answers.py    batched AR answers (transformers) for sequence-level distillation
    talora_training.py  TALoRA banks: one adapter per timestep group
    adapter_file.py  the adapter file `ruvdllm export` merges (numpy only, no torch)

Only adapter_file.py and curve.py may be imported without torch.
"""
