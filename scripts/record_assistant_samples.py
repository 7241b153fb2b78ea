"""Re-record the demo's spoken samples (data/assistant/samples) with festival's kal diphone voice, a voice never
used to train the bundled model (it saw espeak-ng voices only), and check that the bundled pipeline understands
each one: transcript, intent and slots are printed; a sample whose intent comes out wrong stops the script.

    .venv/bin/python scripts/record_assistant_samples.py
"""
from __future__ import annotations

import json

from assistant.io import write_wav
from assistant.pipeline import Pipeline
from assistant.synth import speak_festival
from mmapps.io import atomic_path
from mmapps.paths import data_dir

SAMPLES = [
    ("sample1.wav", "play some jazz by miles davis on spotify", "PlayMusic"),
    ("sample2.wav", "what will the weather be in boston tomorrow", "GetWeather"),
    ("sample3.wav", "add this song to my workout playlist", "AddToPlaylist"),
]
VOICE = "kal_diphone"
STRETCH = 1.15  # a little slower than festival's default, closer to how people give commands


def main() -> None:
    folder = data_dir() / "assistant" / "samples"
    pipe = Pipeline.from_checkpoint(None)
    index = []
    for i, (name, text, intent) in enumerate(SAMPLES):
        x = speak_festival(text, VOICE, seed=i, stretch=STRETCH)
        r = pipe.understand(audio=x)
        print(f"{name}: said {text!r} -> heard {r['transcript']!r} -> {r['intent']} {r['slots']}")
        if r["intent"] != intent:
            raise SystemExit(f"{name}: came out as {r['intent']}, expected {intent}")
        write_wav(folder / name, x)
        index.append({"audio": name, "text": text, "intent": intent,
                      "voice": f"festival {VOICE}, Duration_Stretch {STRETCH} (not used in training)"})
    with atomic_path(folder / "samples.json") as tmp:
        tmp.write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
        tmp.chmod(0o644)


if __name__ == "__main__":
    main()
