import pytest

# Imports inside the fixtures: the Flower test runs in an environment of its own, with flwr and
# the strategies' math but not the hub's server stack (docs/hub.md "Flower").


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """One hub process for a test module (k-anonymity 5, seeded noise)."""
    from tests.federation_hub.hubs import HubProcess

    process = HubProcess(
        tmp_path_factory.mktemp("hub"), extra_args=["--dp-seed", "7", "--max-request-mb", "2"]
    ).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def postgres_server():
    from tests.federation_hub.postgres import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()
