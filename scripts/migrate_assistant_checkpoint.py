"""One-off migration of an assistant checkpoint written before the core Pipeline / FusionModel (config key
``task: assistant-slu``, label maps in the config, a scenario-owned SLUModel) to the current format:
``config = {"scenario": "assistant", "model": ModelConfig, "train": ...}``, label maps / LM / threshold in ``meta``,
and the state-dict keys of the core FusionModel (``encoders.*``, ``heads.*``). The weights are unchanged.

    .venv/bin/python scripts/migrate_assistant_checkpoint.py data/assistant/model.pt \
        --prompt-from ../shared/data/assistant/snips/train
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, fields

from mmapps.checkpoint import load_checkpoint, save_checkpoint

RENAMES = (("sentence.", "encoders.sentence."), ("tokens.", "encoders.tokens."), ("audio.", "encoders.audio."),
           ("intent_head.", "heads.intent."), ("slot_head.", "heads.tags."))


def migrate(path, prompt_from=None) -> None:
    from assistant.asr import build_asr_prompt
    from assistant.io import load_dataset
    from assistant.models import ModelConfig
    from assistant.pipeline import Pipeline

    bundle = load_checkpoint(path)
    old = bundle["config"]
    if old.get("scenario") == "assistant":
        print(f"{path}: already migrated")
        return
    if old.get("task") != "assistant-slu":
        raise SystemExit(f"{path}: not an old assistant checkpoint")
    state = {}
    for k, v in bundle["state_dict"].items():
        new = next((n + k[len(o):] for o, n in RENAMES if k.startswith(o)), k)
        state[new] = v
    names = {f.name for f in fields(ModelConfig)}
    model = ModelConfig(**{k: v for k, v in old["model"].items() if k in names},
                        vocab_size=len(old["vocab"]), n_intents=len(old["intents"]), n_tags=len(old["tags"]))
    meta = {**bundle["meta"], "vocab": old["vocab"], "intents": old["intents"], "tags": old["tags"],
            "lm_text": old["lm_text"], "oos_threshold": old["oos_threshold"],
            "migrated": "scripts/migrate_assistant_checkpoint.py (format of the core Pipeline/FusionModel)"}
    if prompt_from:
        meta["asr_prompt"] = build_asr_prompt(load_dataset(prompt_from)[0])
    config = {"scenario": "assistant", "model": asdict(model), "train": old.get("train", {})}
    save_checkpoint(path, state, config, meta)
    Pipeline.from_checkpoint(path)  # the migrated file loads with the one core loader
    print(f"{path}: migrated ({len(state)} tensors)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--prompt-from", help="training data whose utterances give the Whisper domain prompt")
    a = ap.parse_args()
    migrate(a.checkpoint, a.prompt_from)
