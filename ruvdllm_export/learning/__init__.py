"""The torch side of the learning loops: the torch model equal to an exported model directory
(reference_model.py) and loop B's first-order MicroLoRA trainer over it (microlora_trainer.py).
The runtime never imports this package; the command layer hands the trainer to loop B."""
