import pytest

from runtime import artifact
from tests.runtime.tiny_artifact import random_bank


@pytest.fixture
def banked_model_dir(tiny_model_copy):
    """The tiny model with a bank of adapters and 32 DGR patterns in its banks/."""
    config = artifact.load_config(tiny_model_copy)
    random_bank(config, seed=5).save(tiny_model_copy / "banks")
    artifact.write_manifest(tiny_model_copy)
    return tiny_model_copy


# Two small text domains for the demonstration scripts (benchmarks/learning.py, talora_loops.py)
LICENCES = [
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software "
    "and associated documentation files, to deal in the software without restriction.",
    "Redistribution and use in source and binary forms, with or without modification, are permitted "
    "provided that the following conditions are met: retain the above copyright notice.",
    "The software is provided as is, without warranty of any kind, express or implied, including but "
    "not limited to the warranties of merchantability and fitness for a particular purpose.",
    "Licensed under the Apache License, Version 2.0; you may not use this file except in compliance "
    "with the License. You may obtain a copy of the License at the address below.",
    "This program is free software: you can redistribute it and/or modify it under the terms of the "
    "GNU General Public License as published by the Free Software Foundation.",
    "In no event shall the authors or copyright holders be liable for any claim, damages or other "
    "liability, whether in an action of contract, tort or otherwise, arising from the software.",
]
DOCS = [
    "Install the package with pip install example, then import it and call the main function with "
    "the path of your configuration file to start the server on the default port.",
    "The command line tool reads a YAML file, validates every field against the schema and prints a "
    "one line error for each problem it finds, with the line number of the field.",
    "To run the tests, create a virtual environment, install the development extras and run pytest "
    "from the repository root; the slow tests are skipped unless you pass a flag.",
    "This release adds support for Python 3.13, drops Python 3.8, and speeds up the parser by about "
    "thirty percent on large inputs thanks to a new tokenizer written in C.",
    "The client retries failed requests with exponential backoff and gives up after five attempts; "
    "set the timeout in seconds with the timeout argument of the constructor.",
    "Documentation is built with Sphinx from the docs directory; the API reference is generated from "
    "the docstrings of the public modules and published on every tagged release.",
]


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    for domain, texts in (("licences", LICENCES), ("docs", DOCS)):
        (root / domain).mkdir(parents=True)
        for i, text in enumerate(texts):
            (root / domain / f"{i:05d}.txt").write_text(text + "\n")
    return root
