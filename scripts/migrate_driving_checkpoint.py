"""One-off migration (2026-11-29) of a driving checkpoint to the core Pipeline contract.

Before: config {"kind": "bev_fusion_detector", "detector": {...}}. After: {"scenario": "driving", "model": {...}}.
Weights and meta are unchanged; the file is rewritten atomically. Usage:

    .venv/bin/python scripts/migrate_driving_checkpoint.py data/driving/model.pt
"""
import sys

import torch

from mmapps.checkpoint import save_checkpoint


def migrate(path: str) -> None:
    bundle = torch.load(path, map_location="cpu", weights_only=True)
    conf = bundle["config"]
    if conf.get("scenario") == "driving":
        print(f"{path}: already migrated")
        return
    if conf.get("kind") != "bev_fusion_detector":
        raise SystemExit(f"{path}: not an old-format driving checkpoint (config kind {conf.get('kind')!r})")
    meta = dict(bundle["meta"], migrated="2026-11-29: config kind/detector -> scenario/model")
    save_checkpoint(path, bundle["state_dict"], {"scenario": "driving", "model": conf["detector"]}, meta)
    print(f"{path}: migrated")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        migrate(p)
