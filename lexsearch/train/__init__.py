"""Training LexVLA: data readers, losses, the training loop, distributed helpers and the toy world."""
