"""The offline stand-ins for pretrained bases (the ``tiny`` preset): a tokenizer built from captions, a tiny
Llama pretrained to answer the prompt, and a tiny DINOv2-architecture ViT shipped pretrained.

``builder`` makes random bases and checkpoints from configs; ``lm`` and ``vision`` pretrain them; ``vit_asset``
is the shipped ViT and how it was made; ``bases`` ties them together behind a cache. Nothing here is the
paper's recipe (that is :mod:`lexsearch.train`): it stands in for the hub downloads a real preset makes.
"""
