"""The command-line side: run files (YAML), the embedded default model, the SFT warm start,
output folders and evaluation. `train.py` and `evaluate.py` are built from these; the trainer
never imports them."""
