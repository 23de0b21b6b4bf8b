"""The learning loops (docs/learning.md). Loop A, on every request: record the trajectory (prompt,
per-step uncertainty, adapters and patterns used, answer, timings) and the user's feedback, and
move the usefulness scores of the DGR patterns the answer used.

    config.py           the learning config file (TOML or JSON) and where learning data lives
    trajectory.py       what one request leaves behind, and feedback as a number (pure)
    store.py            the durable trajectory store's interface (IndexedDB will back it in the browser)
    sqlite_store.py     the store on SQLite (WAL) for CPython
    recorder.py         the background writer: the caller only enqueues
    scores.py           per-pattern usefulness: the update math, re-ranking, the file beside the bank
    loop_a.py           the pieces wired together for the CLI and the server
    feedback_command.py `ruvdllm feedback`

Standard library only, like the sampler core: the browser will run the same loop with its store
backed by IndexedDB instead of SQLite.
"""
