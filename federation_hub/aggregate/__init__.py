"""Pure aggregation math over numpy arrays: exact LoRA sums (`lora`), weights (`weights`),
similarity sketches and clustering (`cluster`). No I/O, no policy."""
