"""The distribution's own package: what every part shares and what wires the parts together.

`ruvdllm.errors` is the bottom layer (the one user-facing error type, standard library only);
`ruvdllm.cli` is the top layer (the `ruvdllm` command, which imports each part's subcommand lazily),
with `ruvdllm.default_artifact` beside it (the default model, found in the cache or exported once:
the one step that needs both the runtime and the exporter). Between them: `runtime` (the artifact
contract and sampler core), then `ruvdllm_export` and `federation_hub`, which never import each
other. pyproject.toml's `[tool.importlinter]` contracts check these layers.
"""
