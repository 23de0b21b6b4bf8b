# DAF as a Flower strategy (federation_hub/flower.py): flwr pins its own FastAPI, Starlette,
# uvicorn and protobuf, which clash with the hub's, so its test gets a virtual environment of its
# own with the `flower` extra (docs/hub.md "Flower"); .ci/run runs the test there.
export RUVDLLM_FLOWER_VENV="${RUVDLLM_FLOWER_VENV:-$HOME/.venvs/ruvdllm-flower}"
if [ ! -x "$RUVDLLM_FLOWER_VENV/bin/python" ]; then
    python3 -m venv "$RUVDLLM_FLOWER_VENV"
fi
"$RUVDLLM_FLOWER_VENV/bin/pip" install -q -e ".[flower]" pytest pytest-timeout
