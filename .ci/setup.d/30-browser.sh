# Browser client (web/): Debian's Chromium for the Playwright tests (never `playwright install`),
# and the client's npm packages (pyodide, onnxruntime-web, @huggingface/tokenizers) from the lockfile.
if command -v apt-get >/dev/null && [ ! -x /usr/bin/chromium ]; then
    apt-get install -y -qq chromium >/dev/null
fi
if ! command -v npm >/dev/null; then
    apt-get install -y -qq nodejs npm >/dev/null
fi
# --ignore-scripts: no package here needs an install script (protobufjs's only prints a notice).
(cd web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
