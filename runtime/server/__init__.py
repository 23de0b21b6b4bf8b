"""`ruvdllm serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over a diffusion model.

    command.py      the CLI subcommand: open the model(s), bind, run uvicorn
    app.py          create_app(engine, name, limits): the FastAPI application
    routes.py       the endpoints (protocol only)
    schemas.py      OpenAI request / response bodies and the diffusion knobs
    jobs.py         requests -> checked generation jobs (every 4xx the input can cause)
    engine.py       a pool of models on worker threads; text deltas from the step callback
    text_stream.py  streamable text from out-of-order commits (pure)
    responses.py    OpenAI response bodies and SSE chunks
    limits.py       admission (run slots + bounded queue); the body size limit is ruvdllm.http_limits
    errors.py       OpenAI-style JSON errors for every failure

See docs/server.md.
"""
