"""The paper's training recipe (LexVLA section 3): config, losses, exact large-batch micro-batching, the loop,
distributed helpers and resumable state. Data comes from :mod:`lexsearch.data`; the tiny preset's bases from
:mod:`lexsearch.tiny`."""
