"""The learning loops (docs/learning.md). Loop A, on every request: record the trajectory (prompt,
per-step uncertainty, adapters and patterns used, answer, timings) and the user's feedback, and
move the usefulness scores of the DGR patterns the answer used. Loop B, in the background: train
MicroLoRAs on the liked and corrected answers and add them, with their keys, to the bank. Loop C,
rarely: fold them into the TALoRA group adapters with EWC++.

    config.py           the learning config file (TOML or JSON) and where learning data lives
    trajectory.py       what one request leaves behind, and feedback as a number (pure)
    store.py            the durable trajectory store's interface (IndexedDB will back it in the browser)
    sqlite_store.py     the store on SQLite (WAL) for CPython
    recorder.py         the background writer: the caller only enqueues
    scores.py           per-pattern usefulness: the update math, re-ranking, the file beside the bank
    loop_a.py           the pieces wired together for the CLI and the server
    feedback_command.py `ruvdllm feedback`

    kmeans.py           spherical k-means over prompt embeddings (numpy)
    spsa.py             gradients from forwards alone: SPSA (numpy)
    microlora.py        a rank-1/2 adapter and its place in a bank slot (numpy)
    masked_nll.py       the loss: masked-token NLL of an answer, laid out as BD3LM forwards
    logits_session.py   CPython's forward for it: the graph with its logits exposed (onnx, onnxruntime)
    bank_update.py      a bank rewritten in place, atomically (standard library)
    loop_b.py           loop B: select, group, cluster, train, keep, install; its background thread
    loop_b_service.py   loop B wired to running models and to loop A's store (CPython, `ruvdllm serve`)

    ewc.py              loop C's math: the EWC-penalised low-rank merge, the Fisher carried and averaged
    fisher.py           the Fisher over a group adapter's singular components: measured, saved beside the bank
    consolidate.py      loop C: fold MicroLoRAs into the group adapters, free their slots, retire their keys
    loop_c_service.py   loop C wired to a model and loop A's store (after loop B in `ruvdllm serve`; scripts)
    learn_command.py    `ruvdllm learn consolidate`

Loop A is standard library only, like the sampler core: the browser will run the same loop with
its store backed by IndexedDB instead of SQLite. Loop B's core is numpy (in Pyodide too); its
forward is passed in.
"""
