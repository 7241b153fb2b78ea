"""`mmapps driving ...`: synth, train, evaluate, perceive. Thin: parse, call the pipeline, print.

Only typer and the standard library are imported at module level (``mmapps --help`` stays fast).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mmapps.cli_utils import emit_json, run_command

app = typer.Typer(help="Camera + lidar + GPS -> 3D detection of cars, pedestrians and cyclists (KITTI formats).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

SAMPLES = "samples"


def _table(title: str, rows: list[dict]) -> None:
    from rich.table import Table

    from mmapps.cli_utils import console

    t = Table(title=title)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*[f"{r.get(c):.4g}" if isinstance(r.get(c), float) else str(r.get(c, "-")) for c in cols])
    console.print(t)


# ----------------------------------------------------------------------------------------------- synth
@app.command()
def synth(out: Path = typer.Argument(..., help="output dataset root (training/ is created inside)"),
          frames: int = typer.Option(8, "--frames", help="number of frames"),
          seed: int = typer.Option(0, "--seed", help="same seed -> same dataset"),
          seq_len: int = typer.Option(1, "--seq-len", help="frames per sequence (ego and agents move; for tracking)"),
          workers: int = typer.Option(1, "--workers", help="processes on this machine"),
          shard: Optional[str] = typer.Option(None, "--shard", help="i/n: write only the i-th of n slices"),
          reduced: bool = typer.Option(False, "--reduced", help="keep only camera-view points (KITTI velodyne_reduced)"),
          clutter: bool = typer.Option(False, "--clutter", help="add vans and street furniture (fences, bushes, bins, signs)"),
          json_out: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Ray-cast synthetic road scenes (64-beam lidar + KITTI camera + labels + calib + oxts) in KITTI format."""

    def go():
        from mmapps.parallel import parse_shard

        from .synth import synth_dataset

        return synth_dataset(out, frames, seed, seq_len, workers, parse_shard(shard), reduced, clutter)

    res = run_command(go)
    emit_json(res) if json_out else _table("driving synth", [res])


# ----------------------------------------------------------------------------------------------- train
@app.command()
def train(data: Path = typer.Argument(..., help="KITTI folder with training/{velodyne,image_2,label_2,calib}"),
          out: Path = typer.Option(..., "--out", help="checkpoint to write"),
          config: Optional[Path] = typer.Option(None, "--config", help="TOML/YAML with train and model sections"),
          set_: Optional[List[str]] = typer.Option(None, "--set", help="override, e.g. train.epochs=5 or model.fusion=weighted"),
          fusion: Optional[str] = typer.Option(None, "--fusion", help="concat, weighted, gated, attention, ..."),
          epochs: Optional[int] = typer.Option(None, "--epochs"),
          val: Optional[Path] = typer.Option(None, "--val", help="separate validation KITTI folder (default: 10 % split)"),
          resume: bool = typer.Option(False, "--resume", help="continue from the last end-of-epoch state"),
          device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
          json_out: bool = typer.Option(False, "--json")):
    """Train the camera+lidar BEV fusion detector with the core Trainer (works under torchrun)."""

    def go():
        from .pipeline import TrainSettings, train as train_fn
        from mmapps.config import load_config

        overrides = list(set_ or [])
        if fusion:
            overrides.append(f"model.fusion={fusion!r}".replace("'", '"'))
        if epochs:
            overrides.append(f"train.epochs={epochs}")
        overrides.append(f'train.device="{device}"')
        s = load_config(TrainSettings, config, overrides)
        return train_fn(data, out, s.model, s.train, val=val, resume=resume)

    res = run_command(go)
    import os

    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    emit_json(res) if json_out else _table("driving train", [{k: v for k, v in res.items() if k != "history"}])


# ----------------------------------------------------------------------------------------------- evaluate
@app.command()
def evaluate(data: Path = typer.Argument(..., help="labelled KITTI folder (root or training/)"),
             model: Optional[Path] = typer.Option(None, "--model", help="checkpoint (default: bundled)"),
             method: str = typer.Option("learned", "--method", help="learned or classical"),
             ablations: bool = typer.Option(True, "--ablations/--no-ablations", help="lidar-only / camera-only too"),
             limit: Optional[int] = typer.Option(None, "--limit", help="evaluate only the first N frames"),
             shard: Optional[str] = typer.Option(None, "--shard", help="i/n: evaluate the i-th of n slices"),
             workers: int = typer.Option(1, "--workers", help="processes on this machine (CPU)"),
             device: str = typer.Option("auto", "--device"),
             json_out: bool = typer.Option(False, "--json")):
    """KITTI AP (R40) 3D and BEV per class and difficulty, plus modality ablations."""

    def go():
        from mmapps.parallel import parse_shard, shard_items

        from .io import list_frames, resolve_split
        from .pipeline import Pipeline, evaluate_split

        split = resolve_split(data)
        ids = list_frames(split)
        ids = shard_items(ids, *parse_shard(shard))[: limit or None]
        pipe = Pipeline.from_checkpoint(model, device, method)
        return evaluate_split(split, pipe, ids, ablations, workers)

    res = run_command(go)
    if json_out:
        emit_json(res)
        return
    rows = [{"class": c, "metric": m, **(res[m][c] or {})} for m in ("ap3d", "apbev") for c in res[m]]
    _table(f"driving evaluate ({res['method']}, {res['frames']} frames of {res['split']})", rows)


# ----------------------------------------------------------------------------------------------- perceive
@app.command()
def perceive(input: Optional[Path] = typer.Argument(None, help="KITTI folder (root or training/ or a folder with velodyne/)"),
             frame: Optional[str] = typer.Option(None, "--frame", help="frame id(s), comma-separated (default: all)"),
             out: Optional[Path] = typer.Option(None, "--out", help="write NNNNNN.txt, NNNNNN_bev.png, NNNNNN_camera.png here"),
             lidar: Optional[Path] = typer.Option(None, "--lidar", help="single-file mode: velodyne .bin"),
             image: Optional[Path] = typer.Option(None, "--image", help="single-file mode: camera PNG"),
             calib: Optional[Path] = typer.Option(None, "--calib", help="single-file mode: KITTI calib .txt"),
             oxts: Optional[Path] = typer.Option(None, "--oxts", help="single-file mode: oxts packet (30 fields)"),
             point_dims: int = typer.Option(4, "--point-dims", help="4 (KITTI) or 5 (nuScenes .bin)"),
             model: Optional[Path] = typer.Option(None, "--model", help="checkpoint (default: bundled)"),
             method: str = typer.Option("learned", "--method", help="learned or classical"),
             device: str = typer.Option("auto", "--device"),
             json_out: bool = typer.Option(False, "--json", help="one JSON line per frame")):
    """Detect objects in each frame: KITTI result file, BEV and camera pictures, JSON with latency."""
    run_command(_perceive, input, frame, out, lidar, image, calib, oxts, point_dims, model, method, device, json_out)


def _perceive(input, frame, out, lidar, image, calib, oxts, point_dims, model, method, device, json_out):
    from mmapps.errors import UserError

    from .io import list_frames, load_files, load_frame, resolve_split, write_label
    from .pipeline import Pipeline, Tracker
    from .viz import bev_png, camera_png

    if input is None:
        if not (lidar and image and calib):
            raise UserError("give a KITTI folder INPUT, or --lidar, --image and --calib together")
        frames = [lambda: load_files(lidar, image, calib, oxts, point_dims)]
        source = str(lidar.parent)
    else:
        if lidar or image or calib or oxts:
            raise UserError("give either a KITTI folder INPUT or --lidar/--image/--calib, not both")
        split = resolve_split(input)
        ids = [f.strip() for f in frame.split(",")] if frame else list_frames(split)
        frames = [lambda fid=fid: load_frame(split, fid, labels=False, dims=point_dims) for fid in ids]
        source = str(split)
    # Validate every input before writing anything: a bad frame leaves no partial output behind.
    if len(frames) > 1 or out is not None:
        for load in frames:
            load()
    pipe = Pipeline.from_checkpoint(model, device, method)
    tracker = Tracker()
    rows = []
    for load in frames:
        f = load()
        res = pipe.perceive(f, tracker)
        kitti = res.pop("kitti")
        res["input"] = source
        if out is not None:
            write_label(out / f"{f.id}.txt", kitti)
            bev_png(out / f"{f.id}_bev.png", f, res["objects"])
            camera_png(out / f"{f.id}_camera.png", f, res["objects"])
            res["outputs"] = [str(out / f"{f.id}{s}") for s in (".txt", "_bev.png", "_camera.png")]
        if json_out:
            emit_json(res)
        rows += [{"frame": f.id, "class": o["class"], "score": o["score"], "x": o["box3d"]["x"], "y": o["box3d"]["y"],
                  "track": o.get("track_id"), "latency_ms": res["latency_ms"]} for o in res["objects"]] or \
            [{"frame": f.id, "class": "-", "latency_ms": res["latency_ms"]}]
    if not json_out:
        _table(f"driving perceive ({source})", rows)


# ----------------------------------------------------------------------------------------------- demo hook
def demo(out_dir: Path) -> dict:
    """Run the bundled model on the bundled sample sequence; pictures into out_dir (called by `mmapps demo`)."""
    from mmapps.paths import data_dir

    from .io import list_frames, load_frame, write_label
    from .pipeline import Pipeline, Tracker
    from .viz import bev_png, camera_png

    split = data_dir() / "driving" / SAMPLES / "training"
    pipe = Pipeline.from_checkpoint()
    tracker = Tracker()
    out_dir = Path(out_dir)
    frames = []
    for fid in list_frames(split):
        f = load_frame(split, fid)
        res = pipe.perceive(f, tracker, timing_repeats=1)
        write_label(out_dir / f"{fid}.txt", res.pop("kitti"))
        from .pipeline import gt_boxes

        bev_png(out_dir / f"{fid}_bev.png", f, res["objects"], list(gt_boxes(f, pipe.cfg)[0]))
        camera_png(out_dir / f"{fid}_camera.png", f, res["objects"])
        frames.append({"frame": fid, "objects": len(res["objects"]), "labelled": len(
            [o for o in f.labels or [] if o.type != "DontCare"]), "latency_ms": res["latency_ms"],
            "tracks": sorted({o.get("track_id") for o in res["objects"]})})
    return {"frames": frames, "pictures": str(out_dir)}
