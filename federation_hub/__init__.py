"""Federation hub: a FastAPI service that aggregates the LoRA adapters many devices learn.

Layout (policy, math, storage and protocol kept apart, as in Flower and FastAPI's "Bigger
Applications"):

    main.py         app factory (thin): middleware, routers, lifespan
    command.py      `ruvdllm hub`: settings from the command line, uvicorn
    routers/        HTTP protocol only: parse, authorise, call a service, shape the reply
    services/       glue: submission, round release, gossip loop
    aggregate/      pure numpy math: exact LoRA sums, weights, clustering
    strategies/     policies per timestep group (DAF) and the FedAvg / FedProx baselines
    privacy/        differential privacy (clip, noise, RDP accounting), k-anonymity, group sealing
    gossip/         version vectors and HMAC request signing for hub-to-hub anti-entropy
    storage/        the Store interface, SQLite / PostgreSQL through SQLAlchemy, Alembic migrations
    client.py       the httpx client devices use

The hub never imports torch.
"""
