"""Set keys of a checkpoint's ``meta`` (what the pipeline reads besides the weights), atomically; weights and
config unchanged. Values are JSON. Usage:

    .venv/bin/python scripts/set_checkpoint_meta.py data/driving/model.pt 'modalities=["lidar"]'
"""
import json
import sys

from mmapps.checkpoint import load_checkpoint, save_checkpoint


def main(path: str, assignments: list[str]) -> None:
    bundle = load_checkpoint(path)
    meta = dict(bundle.get("meta") or {})
    for a in assignments:
        key, sep, value = a.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected key=JSON, got {a!r}")
        meta[key] = json.loads(value)
    save_checkpoint(path, bundle["state_dict"], bundle["config"], meta)
    print(f"{path}: meta " + ", ".join(f"{k}={json.dumps(meta[k])}" for k in (a.partition('=')[0] for a in assignments)))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2:])
