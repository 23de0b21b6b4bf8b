"""`python -m ruvdllm ...` is the `ruvdllm` command; torchrun, which needs a module to run, starts a
training on several GPUs with `torchrun --nproc-per-node 8 -m ruvdllm convert ...`."""

import sys

from ruvdllm.cli import main

sys.exit(main())
