import pytest

from tests.federation_hub.hubs import HubProcess


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """One hub process for a test module (k-anonymity 5, seeded noise)."""
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
