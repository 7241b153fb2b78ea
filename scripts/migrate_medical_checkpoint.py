"""Stamp ``model.measured = false`` on medical checkpoints written before that config field existed.

Older medical models read a 5-number CT geometry; the current default (``measured = true``) reads the measured
Brock variables and adds a linear Brock/PLCO term. Run once per old file:

    .venv/bin/python scripts/migrate_medical_checkpoint.py data/medical/model.pt
"""
import sys

from mmapps.checkpoint import load_checkpoint, save_checkpoint


def migrate(path: str) -> bool:
    bundle = load_checkpoint(path)
    model = bundle["config"].get("model", {})
    if bundle["config"].get("scenario") != "medical" or "measured" in model:
        return False
    model["measured"] = False
    save_checkpoint(path, bundle["state_dict"], bundle["config"], bundle.get("meta"))
    return True


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(p, "migrated" if migrate(p) else "unchanged")
