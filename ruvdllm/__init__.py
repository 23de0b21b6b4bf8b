"""The distribution's own package: what every part shares and what wires the parts together.

`ruvdllm.errors` is the bottom layer (the one user-facing error type, standard library only);
`ruvdllm.cli` is the top layer (the `ruvdllm` command, which imports each part's subcommand lazily).
Between them: `runtime` (the artifact contract and sampler core), then `ruvdllm_export` and
`federation_hub`, which never import each other.
"""
