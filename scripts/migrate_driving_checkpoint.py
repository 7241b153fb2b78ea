"""One-off migration (2026-11-29) of a driving checkpoint to the core Pipeline contract.

Before: config {"kind": "bev_fusion_detector", "detector": {...}}. After: {"scenario": "driving", "model": {...}}, with
the detector options added later stated explicitly at the values this model was trained with (absolute coordinate
channels, absolute heights, sin/cos heading). Weights and meta are unchanged; the file is rewritten atomically. Usage:

    .venv/bin/python scripts/migrate_driving_checkpoint.py data/driving/model.pt
"""
import sys

import torch

from mmapps.checkpoint import save_checkpoint


def migrate(path: str) -> None:
    bundle = torch.load(path, map_location="cpu", weights_only=True)
    conf = bundle["config"]
    if conf.get("scenario") == "driving":
        model = conf["model"]
    elif conf.get("kind") == "bev_fusion_detector":
        model = conf["detector"]
    else:
        raise SystemExit(f"{path}: not an old-format driving checkpoint (config kind {conf.get('kind')!r})")
    if "coords" in model:
        print(f"{path}: already migrated")
        return
    model = dict(model, coords=True, ground_relative=False, heading="sincos")
    meta = dict(bundle["meta"], migrated="2026-11-29: config kind/detector -> scenario/model; first-model options explicit")
    save_checkpoint(path, bundle["state_dict"], {"scenario": "driving", "model": model}, meta)
    print(f"{path}: migrated")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        migrate(p)
