"""A bug's 500 (problems.py `UnexpectedErrors`): the one error shape, the traceback in the log, and the
keep-alive connection still usable — the hub's own app under a real uvicorn, with one route that
fails the way a bug does."""

import http.client
import json
import logging
import threading
import time

import pytest
import uvicorn

from federation_hub.main import create_app
from federation_hub.settings import HubSettings
from tests.federation_hub.hubs import free_port


@pytest.fixture
def server(tmp_path):
    app = create_app(HubSettings(database_url=f"sqlite:///{tmp_path / 'hub.db'}", admin_token_hash="-"))

    @app.get("/bug")
    def bug():
        raise RuntimeError("a bug")

    port = free_port()
    served = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not served.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the app did not start"
        time.sleep(0.05)
    yield port
    served.should_exit = True
    thread.join(15)


def test_a_bug_is_a_500_and_the_connection_lives_on(server, caplog):
    """Starlette's catch-all answered and re-raised, so uvicorn closed the connection after the
    500 (which said nothing of it): the next request on it met a reset."""
    connection = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    with caplog.at_level(logging.ERROR, "federation_hub"):
        connection.request("GET", "/bug")
        failed = connection.getresponse()
        problem = json.loads(failed.read())
    assert (
        failed.status == 500
        and set(problem) == {"detail", "errors"}
        and "internal error" in problem["detail"]
    )
    assert any(r.getMessage() == "unhandled error" and r.exc_info for r in caplog.records)
    socket = connection.sock
    connection.request("GET", "/health")  # the same connection
    healthy = connection.getresponse()
    assert healthy.status == 200 and json.loads(healthy.read())["status"] == "ok"
    assert connection.sock is socket
    connection.close()
