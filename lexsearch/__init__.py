"""lexsearch: search local image collections by text, with the words that explain every match.

An implementation of LexVLA (Li et al., "Unified Lexical Representation for Interpretable Visual-Language
Alignment", NeurIPS 2024): images and texts become sparse, non-negative vectors over one vocabulary of words.
"""

import os as _os

# OpenMP threads that spin while waiting make every small torch op ~50x slower as soon as the cores are
# shared (data-loader workers, a second torchrun rank, an indexer next to a query): measured 12 ms instead of
# 0.15 ms for a 96-wide linear layer on 2 busy cores. Passive waiting costs nothing measurable on big ops.
# It must be set before torch loads OpenMP; a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
