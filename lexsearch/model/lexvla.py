"""LexVLA: images and texts as sparse, non-negative vectors over one vocabulary of words.

Li, Wang, Fu, Ru, Zhang, He. "Unified Lexical Representation for Interpretable Visual-Language Alignment",
NeurIPS 2024 (arXiv 2407.17827). The whole forward pass is in this file, top to bottom:

    image --frozen ViT (DINOv2)--> tokens (B, T, Hv) --adapter--> z (B, T, H)
          --z @ Z_img^T--> (B, T, V) --max over tokens--> elu1p --> mask --> L2 norm --> s_img (B, V)
    text  --in-context prompt--> causal LM + LoRA --> final hidden state at the last position h (B, H)
          --h @ Z_txt^T--> (B, V) --> elu1p --> mask --> L2 norm --> s_txt (B, V)

Z_txt are the frozen LM-head rows of the kept vocabulary ids; Z_img starts as a copy and is trained. The score
of a pair is s_img . s_txt, an exact sum of per-word contributions: that sum is the explanation of a match.
The mask (ours, not the paper's) zeroes the prompt's own words that no training caption used ("focus", "lies",
"important"): no caption makes them a positive, so they can only be noise, and they are what an image unlike
the training images drifts to (lexsearch.model.vocab.prompt_only_columns).
Shapes: B batch, T tokens (CLS + patches), P patches, Hv backbone width, H LM width, V kept vocabulary.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from lexsearch.model.config import ModelConfig


def elu1p(x: torch.Tensor) -> torch.Tensor:
    """ELU + 1: x + 1 for x >= 0, exp(x) below [paper]. Positive everywhere and monotone."""
    return F.elu(x) + 1.0


def lexical(logits: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Logits over the vocabulary -> a non-negative, L2-normalised lexical vector (computed in float32).

    ``keep`` (V,) is 1 for the columns a vector may use and 0 for masked ones (zeroed before the norm)."""
    x = elu1p(logits.float())
    if keep is not None:
        x = x * keep
    return F.normalize(x, dim=-1)


def codebook_logits(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """``x @ codebook^T`` (..., V) in float32 even under bf16 autocast: a bf16 product keeps ~3 significant
    digits, too few to rank 17k words whose logits differ in the third."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return x.float() @ codebook.float().T


class Adapter(nn.Module):
    """One pre-LN self-attention block at backbone width, then a 2-layer MLP up to the LM width [paper ~17M].

    With Hv=768, H=4096, hidden=2048 (the paper's sizes) it has 17.0M parameters.
    """

    def __init__(self, width: int, out_dim: int, heads: int, mlp_ratio: float, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        inner = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, inner), nn.GELU(), nn.Linear(inner, width))
        self.proj = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, Hv) -> (B, T, H)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.proj(x)


class TextHead(nn.Module):
    """h + U D h, rank r, U zero-initialised (so an untrained head changes nothing): LoRA on the LM's final
    state at the read-out position [choice; ModelConfig.text_head_rank]."""

    def __init__(self, width: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, rank, bias=False)
        self.up = nn.Linear(rank, width, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.down(h))


class LexVLA(nn.Module):
    """The model. Frozen: the vision backbone, the LM and Z_txt. Trainable: adapter, Z_img, LoRA, temperature,
    optional dense heads. Build it with :func:`lexsearch.model.checkpoint.build_model` (bases from configs or
    from the hub) rather than by hand.
    """

    def __init__(self, config: ModelConfig, vision: nn.Module, lm: nn.Module, tokenizer) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model

        self.config = config
        self.tokenizer = tokenizer
        self.vision = vision.requires_grad_(False).eval()
        # Register tokens (DINOv2 with registers) sit between CLS and the patches; they are not patches.
        self.num_prefix_tokens = 1 + int(getattr(vision.config, "num_register_tokens", 0) or 0)
        self.patch_size = int(vision.config.patch_size)
        vision_width = int(vision.config.hidden_size)

        lm.requires_grad_(False)
        head = lm.get_output_embeddings().weight  # (V_full, H)
        lm_width = head.shape[1]
        if not config.vocab_ids or max(config.vocab_ids) >= head.shape[0]:
            raise ValueError("config.vocab_ids must be non-empty ids of the LM's vocabulary")
        ids = torch.tensor(config.vocab_ids, dtype=torch.long, device=head.device)
        # Z_txt: frozen LM-head rows of the kept vocabulary [paper]. A buffer, so it never gets a gradient.
        self.register_buffer("z_txt", head.detach()[ids].float().clone(), persistent=False)  # (V, H)
        # Z_img: trainable, initialised from Z_txt [paper]; only the image read-out's rows (set_image_columns).
        self.z_img = nn.Parameter(self.z_txt.clone())  # (V, H) or (|image_columns|, H)
        # 1 per column, 0 for the prompt's words no training caption used; follows config.caption_words.
        self.register_buffer("keep", torch.ones(len(ids), device=head.device), persistent=False)  # (V,)
        self.set_caption_words(config.caption_words)
        self.register_buffer(
            "image_cols", torch.zeros(0, dtype=torch.long, device=head.device), persistent=False
        )
        self.set_image_columns(config.image_columns)

        self.text_head = TextHead(lm_width, config.text_head_rank) if config.text_head_rank > 0 else None
        self.adapter = Adapter(
            vision_width, lm_width, config.adapter_heads, config.adapter_mlp_ratio, config.adapter_hidden
        )
        # LoRA on the LM's linear projections [paper: ~0.30% of Llama-2-7B]; peft freezes everything else.
        targets = [t for t in config.lora_targets if any(n.endswith(t) for n, _ in lm.named_modules())]
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=targets,
            bias="none",
        )
        self.lm = get_peft_model(lm, lora)
        self.decoder = self.lm.get_base_model().get_decoder()  # the transformer without its LM head

        # Learnable temperature [paper]: stored as log(1 / 0.07); the scale is clamped at 100 when used.
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))

        # Optional dense heads (beyond the paper) for FAISS re-ranking and image-as-query; 0 = off.
        if config.dense_dim > 0:
            self.dense_img = nn.Linear(lm_width, config.dense_dim)
            self.dense_txt = nn.Linear(lm_width, config.dense_dim)
        else:
            self.dense_img = self.dense_txt = None

        prefix, suffix = config.prompt_parts()
        self._prefix, self._suffix = prefix, suffix
        # The LM sees the whole prompt string tokenised at once, as the paper writes it: tokenising prefix,
        # text and suffix apart would give each part its own leading word marker (a SentencePiece model
        # would read `of " a red circle "`). The shared part whose key/value cache is computed once per batch
        # is the prefix up to its last space: merges never cross a word start, so every prompt's ids begin
        # with it (tokenize checks, and refuses a tokenizer for which one does not).
        cut = prefix.rstrip().rfind(" ")
        shared = prefix[:cut] if cut > 0 else ""
        self.register_buffer("prefix_ids", self._ids(shared, special=True), persistent=False)
        # Set by prepare_queries (inference only): the prefix's key/value cache and the empty text's state.
        self._query_prefix = None
        self._query_h0: torch.Tensor | None = None
        self.query_dtype: torch.dtype | None = None  # the LM's dtype when prepare_queries cast it

    # ------------------------------------------------------------------------------------------- helpers
    @property
    def vocab_size(self) -> int:
        return self.z_txt.shape[0]

    def set_caption_words(self, words) -> list[int]:
        """Record the training captions' words in the config and mask the prompt-only columns; returns them."""
        from lexsearch.model.vocab import Vocabulary, prompt_only_columns

        self.config.caption_words = sorted(set(words))
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        masked = []
        if backend is not None and self.config.caption_words:
            vocab = Vocabulary(backend, self.config.vocab_ids)
            masked = prompt_only_columns(
                vocab, self.config.prompt + self.config.prompt_end, self.config.caption_words
            )
        self.keep.fill_(1.0)
        self.keep[masked] = 0.0
        return masked

    def set_image_columns(self, columns) -> None:
        """Restrict the read-out to these vocabulary columns (empty = all); recorded in the config.

        Z_img keeps only their rows: an image vector is zero elsewhere, so the other rows could never be
        used or trained (at Gemma's 87,784 words they are 225 MB, and Adam's step over them was ~45% of a
        frozen-text training step). Only a full Z_img can be restricted, or one already on these columns.
        """
        cols = sorted({int(c) for c in columns})
        if self.z_img.shape[0] != self.vocab_size and cols != self.config.image_columns:
            raise ValueError("the image codebook is already restricted to other columns")
        self.config.image_columns = cols
        self.image_cols = torch.tensor(cols, dtype=torch.long, device=self.keep.device)
        if cols and self.z_img.shape[0] == self.vocab_size:
            self.z_img = nn.Parameter(self.z_img.detach()[self.image_cols].clone())

    def _image_logits(self, z: torch.Tensor) -> torch.Tensor:
        """``z @ Z_img^T``: (..., V), or (..., |image_columns|) when restricted."""
        return codebook_logits(z, self.z_img)

    def read_text(self, h: torch.Tensor) -> torch.Tensor:
        """Text read-out logits of LM states h (B, H) (through the text head, if any): (B, V), or
        (B, |image_columns|) when restricted."""
        if self.text_head is not None:
            h = self.text_head(h)
        z = self.z_txt[self.image_cols] if self.image_cols.numel() else self.z_txt
        return codebook_logits(h, z)

    def _read_keep(self) -> torch.Tensor:
        return self.keep[self.image_cols] if self.image_cols.numel() else self.keep

    def _full_width(self, x: torch.Tensor) -> torch.Tensor:
        """Vectors over the read-out's columns -> (..., V), zero on the other columns."""
        if not self.image_cols.numel():
            return x
        out = x.new_zeros(*x.shape[:-1], self.vocab_size)
        out[..., self.image_cols] = x
        return out

    def logit_scale(self) -> torch.Tensor:
        """exp(log scale), clamped at ``max_logit_scale`` (100, as CLIP) [paper]."""
        return self.log_logit_scale.exp().clamp(max=self.config.max_logit_scale)

    def _ids(self, text: str, special: bool) -> torch.Tensor:
        return torch.tensor(self.tokenizer(text, add_special_tokens=special)["input_ids"], dtype=torch.long)

    def prompt_ids(self, text: str) -> list[int]:
        """Token ids of the whole prompt around ``text`` (BOS included), its text cut to ``max_text_tokens``."""
        text = " ".join(text.split())
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) > self.config.max_text_tokens:
            text = text[: enc["offset_mapping"][self.config.max_text_tokens - 1][1]]
        prompt = self._prefix + text + self._suffix
        return self.tokenizer(prompt, add_special_tokens=True)["input_ids"]

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt of each text after the shared prefix (``prefix_ids``), right-padded: ids (B, L) and
        attention mask (B, L). ``prefix_ids + row`` is the tokenisation of the whole prompt string.

        The text is cut to ``max_text_tokens`` but the suffix is always kept: the read-out position must be
        the prompt's end.
        """
        prefix = self.prefix_ids.tolist()
        n = len(prefix)
        rows = []
        for text in texts:
            full = self.prompt_ids(text)
            # Never seen with SentencePiece or byte-level BPE, which start words at spaces.
            if full[:n] != prefix:
                raise ValueError(
                    f"the tokenizer merges pieces across the prompt prefix's last space ({text!r}); the shared "
                    "prefix would not be exact"
                )
            rows.append(full[n:])
        length = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), length), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return ids, mask

    # -------------------------------------------------------------------------------------------- text
    def text_hidden(self, ids: torch.Tensor, mask: torch.Tensor, share_prefix: bool = True) -> torch.Tensor:
        """Final hidden state (after the LM's final norm) at each text's last prompt position: (B, H).

        ``share_prefix`` runs the fixed prompt prefix once and shares its key/value cache with the whole
        batch: exact, and most of the prompt's tokens are in the prefix.
        """
        device = ids.device
        bsz, length = ids.shape
        prefix = self.prefix_ids.to(device)
        n_prefix = prefix.shape[0]
        full_mask = torch.cat([mask.new_ones(bsz, n_prefix), mask], dim=1)  # (B, Lp + L)
        # Under gradient checkpointing transformers drops the KV cache inside every layer (a recompute would
        # write it twice), so the text would silently not attend to the prefix: run the full prompt instead.
        # The choice must not depend on grad mode: GradCache's no-grad pass and its re-forward with a graph
        # must take one path, or their features (and LoRA dropout's draws) differ.
        if share_prefix and not self._checkpointing_drops_cache():
            key = self._cache_kwarg()
            if self._query_prefix is not None and not self.training:
                cache = copy.deepcopy(self._query_prefix)  # the forward appends to it: a fresh copy
            else:
                cache = self._prefix_cache()
            if bsz > 1:
                cache.batch_repeat_interleave(bsz)
            positions = torch.arange(n_prefix, n_prefix + length, device=device)[None].expand(bsz, -1)
            out = self.decoder(
                input_ids=ids,
                attention_mask=full_mask,
                position_ids=positions,
                use_cache=True,
                **{key: cache},
            )
            hidden = out.last_hidden_state  # (B, L, H)
            last = mask.sum(1) - 1
        else:
            full = torch.cat([prefix[None].expand(bsz, -1), ids], dim=1)  # (B, Lp + L)
            hidden = self.decoder(input_ids=full, attention_mask=full_mask, use_cache=False).last_hidden_state
            last = full_mask.sum(1) - 1
        return hidden[torch.arange(bsz, device=device), last]  # (B, H)

    def _prefix_cache(self):
        """The shared prompt prefix run through the LM: its key/value cache (batch 1)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.decoder.config)
        prefix = self.prefix_ids.to(self.z_txt.device)
        self.decoder(input_ids=prefix[None], use_cache=True, **{self._cache_kwarg(): cache})
        return cache

    @torch.no_grad()
    def prepare_queries(self, dtype: torch.dtype | None = None) -> None:
        """Inference only (a server's warm-up, after any LoRA merge): run the LM in ``dtype`` (None: as it
        is), and compute once what every text's encoding shares: the prompt prefix's key/value cache (a
        query then runs only its own ~16 tokens through the LM) and, when the read-out is calibrated, the
        empty text's state h0 (not a second row per query). Both are what each call computed before, so in
        the same dtype the vectors are the same. ``train()`` drops them: trained weights would change them.
        """
        self.eval()
        if dtype is not None:
            self.lm.to(dtype)
            self.query_dtype = dtype
        self._query_prefix = None
        self._query_h0 = None
        if self._checkpointing_drops_cache():
            return
        self._query_prefix = self._prefix_cache()
        if self.config.text_calibration:
            ids, mask = self.tokenize([""])
            self._query_h0 = self.text_hidden(ids.to(self.z_txt.device), mask.to(self.z_txt.device)).float()

    def _cache_kwarg(self) -> str:
        """The decoder's name for its key/value cache argument: ``cache`` from transformers 5.24 on,
        ``past_key_values`` before (an unknown name would be swallowed by ``**kwargs``: no cache, silently)."""
        import inspect

        return "cache" if "cache" in inspect.signature(self.decoder.forward).parameters else "past_key_values"

    def _checkpointing_drops_cache(self) -> bool:
        """True when the LM's layers are checkpointed in training mode (whatever the grad mode)."""
        layer = self.decoder.layers[0] if hasattr(self.decoder, "layers") else None
        return bool(getattr(layer, "gradient_checkpointing", False) and layer.training)

    def encode_text(
        self, ids: torch.Tensor, mask: torch.Tensor, share_prefix: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """s_txt (B, V) = L2norm(elu1p(h @ Z_txt^T)): next-token logits on the vocabulary, no softmax [paper];
        and the dense text vector (B, D) or None."""
        a = self.config.text_calibration
        h0 = self._query_h0 if a and not self.training else None  # computed once by prepare_queries
        if a and h0 is None:
            ids, mask = self._with_empty_row(ids, mask)
        h = self.text_hidden(ids, mask, share_prefix=share_prefix).float()  # (B, H), (B + 1, H) calibrated
        s_txt = self._full_width(self.lexical_text(h if h0 is None else torch.cat([h, h0])))  # (B, V)
        if a and h0 is None:
            h = h[:-1]
        dense = (
            F.normalize(self.dense_txt(self._dense_input(h)), dim=-1) if self.dense_txt is not None else None
        )
        return s_txt, dense

    def lexical_text(self, h: torch.Tensor) -> torch.Tensor:
        """s_txt on the read-out's columns from LM states h (B, H), or (B + 1, H) with the empty text's
        state last when the read-out is calibrated (``config.text_calibration``): (B, V) or (B, |columns|)."""
        logits = self.read_text(h)
        a = self.config.text_calibration
        if a:
            logits = logits[:-1] - a * logits[-1:]
        return lexical(logits, self._read_keep())

    def _with_empty_row(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``ids`` / ``mask`` (B, L) with the empty text's prompt as row B, all right-padded to one length."""
        empty = self.tokenize([""])[0][0].to(ids.device)  # the calibration row (config.text_calibration)
        length = max(ids.shape[1], empty.shape[0])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out_ids = ids.new_full((ids.shape[0] + 1, length), pad)
        out_mask = mask.new_zeros((ids.shape[0] + 1, length))
        out_ids[:-1, : ids.shape[1]], out_mask[:-1, : ids.shape[1]] = ids, mask
        out_ids[-1, : empty.shape[0]], out_mask[-1, : empty.shape[0]] = empty, 1
        return out_ids, out_mask

    def word_vectors(self, vocab_columns: torch.Tensor) -> torch.Tensor:
        """Word-level vectors of single-piece words: L2norm(elu1p(Z_txt[w] @ Z_txt^T)) [paper]. (W, V)."""
        z = self.z_txt[self.image_cols] if self.image_cols.numel() else self.z_txt  # on the read-out's words
        return self._full_width(lexical(codebook_logits(self.z_txt[vocab_columns], z), self._read_keep()))

    # ------------------------------------------------------------------------------------------- image
    def backbone_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """The frozen backbone's tokens (B, T, Hv) of images (B, 3, S, S); no graph (nothing there trains)."""
        with torch.no_grad():
            return self.vision(pixel_values=pixels.to(self._vision_dtype())).last_hidden_state

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Adapter tokens z (B, T, H) of images: pixels (B, 3, S, S), or their backbone tokens (B, T, Hv)
        computed before (the backbone is frozen, so training may compute them once per image)."""
        feats = images if images.dim() == 3 else self.backbone_tokens(images)
        return self.adapter(feats.float())

    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """s_img (B, V) = L2norm(elu1p(max_t z_t @ Z_img^T)) and the dense image vector (B, D) or None.

        ``pixels`` may also be backbone tokens (B, T, Hv), as :meth:`image_tokens` takes.
        elu1p is monotone, so max-then-elu1p equals elu1p-then-max and never materialises elu1p(B, T, V).
        CLS takes part in the max [choice].
        """
        s_img, dense = self.encode_image_columns(pixels)
        return self._full_width(s_img), dense

    def encode_image_columns(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`encode_image` on the read-out's columns only: (B, |image_columns|) (or (B, V) when
        unrestricted), and the dense vector. What training with a frozen text tower scores."""
        z = self.image_tokens(pixels)  # (B, T, H)
        logits = self._image_logits(z)  # (B, T, V')
        s_img = lexical(logits.max(dim=1).values, self._read_keep())  # (B, V')
        dense = None
        if self.dense_img is not None:
            dense = F.normalize(self.dense_img(self._dense_input(z.mean(1))), dim=-1)
        return s_img, dense

    def word_margin(self, pixels: torch.Tensor) -> torch.Tensor:
        """How far each image's strongest word stands out (B,): its read-out (max over tokens of z_t . Z_img,
        before elu1p) minus the median read-out over the unmasked vocabulary.

        The lexical vector is L2-normalised, so its weights say which words lead, not how strongly the image
        shows them: a photo unlike anything in training still gets a top word of weight ~0.6. The raw margin
        keeps that strength (bench/weak_words.py measures it).
        """
        logits = self._image_logits(self.image_tokens(pixels)).max(dim=1).values  # (B, V')
        kept = logits[:, self._read_keep() > 0]
        return kept.max(dim=1).values - kept.median(dim=1).values

    def patch_vectors(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch-level lexical vectors (B, P, V): the same read-out on each patch token, no max [paper]."""
        z = self.image_tokens(pixels)[:, self.num_prefix_tokens :]  # (B, P, H)
        return self._full_width(lexical(self._image_logits(z), self._read_keep()))

    def _dense_input(self, x: torch.Tensor) -> torch.Tensor:
        """What a dense head reads: detached from the adapter / LoRA unless ``dense_backprop`` (the dense
        InfoNCE would otherwise reshape the lexical model it only rides on)."""
        return x if self.config.dense_backprop else x.detach()

    def _vision_dtype(self) -> torch.dtype:
        return next(self.vision.parameters()).dtype

    # ------------------------------------------------------------------------------------- parameters
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes (adapter, Z_img, LoRA, temperature, dense heads): what a checkpoint holds."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {n: t for n, t in self.state_dict().items() if n in names}

    def train(self, mode: bool = True) -> LexVLA:
        super().train(mode)
        if mode:  # what prepare_queries computed holds for these weights only
            self._query_prefix = self._query_h0 = None
        self.vision.eval()  # frozen backbone: no dropout / stochastic depth, ever
        return self
