"""Where image-text pairs come from: caption folders (JSONL/CSV), WebDataset shards, Karpathy split files and
the generated toy world. Used by training, evaluation and the demo alike."""
