"""Synthetic speech for a text intent dataset with espeak-ng (voices, variants, speed, pitch), resampled
22,050 -> 16 kHz, with low noise (~30 dB SNR): espeak output holds runs of exact zeros that break the ASR."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

from mmapps.errors import UserError

TRAIN_VOICES = ("en-us", "en-gb", "en-029")
HELDOUT_VOICES = ("en-gb-scotland", "en-us-nyc")  # never used for training: the speech benchmark's voices
VARIANTS = tuple(f"m{i}" for i in range(1, 9)) + tuple(f"f{i}" for i in range(1, 6))


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50, snr_db: float = 30.0,
          seed: int = 0) -> np.ndarray:
    """Text -> float32 mono 16 kHz waveform via espeak-ng, plus white noise at snr_db."""
    import io

    import soundfile as sf

    from .io import resample

    if not espeak_available():
        raise UserError("espeak-ng is not installed (apt-get install espeak-ng)")
    # '--' ends the options, so a text starting with '-' is spoken, not parsed
    p = subprocess.run(["espeak-ng", "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch)), "--stdout", "--", text],
                       capture_output=True, timeout=60)
    if p.returncode != 0 or not p.stdout:
        raise UserError(f"espeak-ng failed for voice {voice!r}: {p.stderr.decode(errors='replace').strip()[:120]}")
    x, sr = sf.read(io.BytesIO(p.stdout), dtype="float32")
    return _add_noise(resample(x if x.ndim == 1 else x.mean(1), sr), snr_db, seed)


FESTIVAL_VOICES = ("kal_diphone", "ked_diphone")  # Debian festvox-kallpc16k / festvox-kdlpc16k, 16 kHz


def festival_available() -> bool:
    return shutil.which("text2wave") is not None


def speak_festival(text: str, voice: str = "kal_diphone", snr_db: float = 30.0, seed: int = 0,
                   stretch: float = 1.0) -> np.ndarray:
    """Text -> float32 mono 16 kHz waveform with a festival diphone voice (text2wave), plus white noise;
    ``stretch`` > 1 speaks slower (festival's Duration_Stretch)."""
    import tempfile

    import soundfile as sf

    from .io import resample

    if not festival_available():
        raise UserError("festival is not installed (apt-get install festival festvox-kallpc16k festvox-kdlpc16k)")
    if voice not in FESTIVAL_VOICES:
        raise UserError(f"festival voice must be one of {', '.join(FESTIVAL_VOICES)}; got {voice!r}")
    with tempfile.TemporaryDirectory() as tmp:  # text2wave seeks in its output: a real file, not a pipe
        (Path(tmp) / "in.txt").write_text(text, encoding="utf-8")
        p = subprocess.run(["text2wave", "-eval", f"(voice_{voice})", "-eval",
                            f"(Parameter.set 'Duration_Stretch {float(stretch):.3f})", "-o", f"{tmp}/out.wav",
                            f"{tmp}/in.txt"],
                           capture_output=True, timeout=60)
        wav = Path(tmp) / "out.wav"
        if p.returncode != 0 or not wav.is_file() or wav.stat().st_size <= 44:
            raise UserError(f"text2wave failed for voice {voice!r}: {p.stderr.decode(errors='replace').strip()[:120]}")
        x, sr = sf.read(wav, dtype="float32")
    return _add_noise(resample(x if x.ndim == 1 else x.mean(1), sr), snr_db, seed)


def _add_noise(x: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """White noise at snr_db: synthetic voices hold runs of exact zeros that no microphone produces."""
    rng = np.random.default_rng(seed)
    power = float(np.mean(x ** 2)) or 1e-8
    x = x + rng.normal(0, np.sqrt(power / 10 ** (snr_db / 10)), x.shape).astype(np.float32)
    return np.clip(x, -1, 1).astype(np.float32)


def voice_plan(n: int, seed: int, voices=TRAIN_VOICES) -> list[dict]:
    """One random voice/variant/speed/pitch per utterance (deterministic in seed)."""
    rng = np.random.default_rng(seed)
    return [{"voice": f"{voices[rng.integers(len(voices))]}+{VARIANTS[rng.integers(len(VARIANTS))]}",
             "speed": int(rng.integers(130, 200)), "pitch": int(rng.integers(30, 70)),
             "seed": int(rng.integers(2**31))} for _ in range(n)]


def _synth_one(job: dict) -> dict:
    from .io import write_wav

    x = speak(job["text"], job["voice"], job["speed"], job["pitch"], seed=job["seed"])
    write_wav(job["path"], x)
    return {"audio": job["rel"], "text": job["text"], "intent": job["intent"], "tags": job["tags"],
            "voice": job["voice"], "speed": job["speed"], "pitch": job["pitch"], "seconds": round(len(x) / 16000, 3)}


def without_spoken(examples: list[dict], manifests) -> list[dict]:
    """The examples whose words no row of ``manifests`` holds (a transcribed row counts by its ``reference``): a
    spoken validation set then shares no utterance with the speech a model was trained on."""
    from .asr import wer_form  # casing, punctuation and digits do not make another utterance
    from .io import read_manifest

    spoken = {" ".join(wer_form(r.get("reference") or r.get("text") or "")) for m in manifests
              for r in read_manifest(m)}
    return [e for e in examples if " ".join(wer_form(e["text"])) not in spoken]


def synth_dataset(examples: list[dict], out, seed: int = 0, voices=TRAIN_VOICES, limit: int | None = None,
                  shard: tuple[int, int] = (0, 1), workers: int = 1, progress: bool = True) -> Path:
    """Write OUT/wav/*.wav and OUT/manifest.jsonl ({audio, text, intent, tags, voice}) atomically."""
    from mmapps.io import atomic_dir
    from mmapps.parallel import parallel_map, shard_items
    from mmapps.progress import track

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(examples))
    if limit is not None:
        order = order[:limit]
    plan = voice_plan(len(order), seed + 1, voices)
    jobs = [{**plan[k], "text": examples[i]["text"], "intent": examples[i]["intent"], "tags": examples[i]["tags"],
             "rel": f"wav/{k:06d}.wav"} for k, i in enumerate(order)]
    jobs = shard_items(jobs, *shard)
    out = Path(out)
    with atomic_dir(out) as tmp:
        (tmp / "wav").mkdir()
        for j in jobs:
            j["path"] = str(tmp / j["rel"])
        if workers > 1:
            rows = parallel_map(_synth_one, jobs, workers)
        else:
            rows = [_synth_one(j) for j in (track(jobs, "synthesising speech", total=len(jobs)) if progress else jobs)]
        (tmp / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out / "manifest.jsonl"
