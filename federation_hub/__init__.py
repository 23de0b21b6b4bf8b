"""Federation hub: a FastAPI service that aggregates the LoRA adapters many devices learn.

Layout (policy, math, storage and protocol kept apart, as in Flower and FastAPI's "Bigger
Applications"):

    main.py         app factory (thin): middleware, routers, lifespan
    command.py      `ruvdllm hub`: settings from the command line, uvicorn
    routers/        HTTP protocol only: parse, authorise, call a service, shape the reply
    services/       the rules: submission (accept once, open rounds, ε budget), rounds, gossip loop
    aggregate/      pure numpy math: exact LoRA sums, weights, clustering
    strategies/     policies per timestep group (DAF) and the FedAvg / FedProx baselines
    privacy/        differential privacy (clip, noise, RDP accounting), k-anonymity, group sealing
    gossip/         version vectors and HMAC request signing for hub-to-hub anti-entropy
    storage/        stores only: Store and Transaction, SQLite / PostgreSQL (SQLAlchemy), Alembic
    client.py       the httpx client devices use

The hub never imports torch.
"""
