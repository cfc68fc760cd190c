"""The training recipe: the rank and its collectives, the model and adapter, the loop, held-out evaluation, checkpoints and the outputs."""
