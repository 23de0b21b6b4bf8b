"""Alembic environment: runs on the connection the hub passes in (`config.attributes`), so the
hub migrates its own database at start-up; `alembic` on the command line works with -x url=..."""

from alembic import context
from sqlalchemy import create_engine

from federation_hub.storage.tables import metadata

config = context.config
connection = config.attributes.get("connection")

if connection is None:  # command-line use: alembic -x url=sqlite:///hub.db upgrade head
    url = context.get_x_argument(as_dictionary=True)["url"]
    with create_engine(url).begin() as conn:
        context.configure(connection=conn, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
