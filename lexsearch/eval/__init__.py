"""The paper's evaluations: zero-shot retrieval R@K (with a sparsity sweep) and PatchDis mIoU, plus the
toy-world word metrics (``toy``: explanation precision with its controls).

Core functions take an encoder with the documented ``Encoder`` API (docs/INTERFACES.md) or plain arrays;
they never print. ``report`` turns results into plain-text tables for the CLI.
"""
