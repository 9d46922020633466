"""lexsearch: search local image collections by text, with the words that explain every match.

An implementation of LexVLA (Li et al., "Unified Lexical Representation for Interpretable Visual-Language
Alignment", NeurIPS 2024): images and texts become sparse, non-negative vectors over one vocabulary of words.
"""

__version__ = "0.1.0"
