"""The device's side of federation (loop C's sharing, docs/learning.md "Federation"): the bank's
adapters go up to a hub per privacy tier the user consented to, released aggregates come down and
are merged into the bank. It needs both the runtime (banks) and the hub's client, so it lives in the
command layer, above both.

    bank_pairs.py   a bank's group adapters as the hub's LoRA pairs and back; the merge math
    bank_write.py   replacing adapters of a bank on disk atomically, with the releases merged
    retry_state.py  backoff after failures, across runs
    sync.py         one federation step: send per tier, merge releases
    command.py      `ruvdllm federate`
"""
