"""`mmapps driving ...`: synth, train, evaluate, perceive. Thin: parse, call the pipeline, print.

Only typer and the standard library are imported at module level (``mmapps --help`` stays fast).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import typer

from mmapps.cli_utils import (DEVICE_OPT, JSON_OPT, MODEL_OPT, OUT_OPT, SHARD_OPT, WORKERS_OPT, console,
                              emit_json, print_table, run_command)

app = typer.Typer(help="Camera + lidar + GPS -> 3D detection of cars, pedestrians and cyclists (KITTI formats).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

SAMPLES = "samples"


# ----------------------------------------------------------------------------------------------- synth
@app.command()
def synth(out: Path = typer.Argument(..., help="output dataset root (training/ is created inside)"),
          frames: int = typer.Option(8, "--frames", help="number of frames"),
          seed: int = typer.Option(0, "--seed", help="same seed -> same dataset"),
          seq_len: int = typer.Option(1, "--seq-len", help="frames per sequence (ego and agents move; for tracking)"),
          workers: int = WORKERS_OPT,
          shard: Optional[str] = SHARD_OPT,
          reduced: bool = typer.Option(False, "--reduced", help="keep only camera-view points (KITTI velodyne_reduced)"),
          clutter: bool = typer.Option(True, "--clutter/--no-clutter", help="vans, trucks and street furniture (walls, guard rails, hedges, bike racks, poles, signs)"),
          json_out: bool = JSON_OPT):
    """Ray-cast synthetic road scenes (64-beam lidar + KITTI camera + labels + calib + oxts) in KITTI format."""

    def go():
        from mmapps.parallel import parse_shard

        from .synth import synth_dataset

        return synth_dataset(out, frames, seed, seq_len, workers, parse_shard(shard), reduced, clutter)

    res = run_command(go)
    emit_json(res) if json_out else print_table([res], "driving synth")


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
          init: Optional[Path] = typer.Option(None, "--init", help="warm-start from this driving checkpoint (same-shape weights)"),
          device: str = DEVICE_OPT,
          json_out: bool = JSON_OPT):
    """Train the camera+lidar BEV fusion detector with the core Trainer (works under torchrun)."""

    def go():
        from mmapps.cli_utils import check_output_file
        from mmapps.config import load_config

        from .train import TrainSettings, train as train_fn

        check_output_file(out)
        overrides = list(set_ or [])
        if fusion:
            overrides.append(f"model.fusion={fusion!r}".replace("'", '"'))
        if epochs:
            overrides.append(f"train.epochs={epochs}")
        overrides.append(f'train.device="{device}"')
        s = load_config(TrainSettings, config, overrides)
        return train_fn(data, out, s.model, s.train, val=val, resume=resume, init=init,
                        gt_sampling=s.augment.gt_sampling())

    res = run_command(go)
    import os

    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    emit_json(res) if json_out else print_table([{k: v for k, v in res.items() if k != "history"}], "driving train")


@app.command("train-refiner")
def train_refiner(data: Path = typer.Argument(..., help="KITTI folder with training/{velodyne,image_2,label_2,calib}"),
                  init: Path = typer.Option(..., "--init", help="the first-stage driving checkpoint (kept frozen)"),
                  out: Path = typer.Option(..., "--out", help="checkpoint to write: the first stage + the refiner"),
                  epochs: int = typer.Option(30, "--epochs", min=1, max=1000),
                  jitter: int = typer.Option(3, "--jitter", min=0, max=20, help="perturbed copies of each labelled box"),
                  seed: int = typer.Option(0, "--seed", help="validation split and training seed"),
                  grid: str = typer.Option("6x4x2", "--grid", help="RoI grid pooling cells LxWxH ('' = the global max-pool alone)"),
                  json_out: bool = JSON_OPT):
    """Train the second stage (points in each detected box -> a refined box and its IoU) on a frozen detector."""

    def go():
        from mmapps.cli_utils import check_output_file

        from .refine import train_refiner as train_fn

        check_output_file(out)
        return train_fn(data, init, out, epochs=epochs, jitter=jitter, seed=seed, grid=parse_grid(grid), quiet=json_out)

    res = run_command(go)
    emit_json(res) if json_out else print_table([{k: v for k, v in res.items() if k != "history"}], "driving train-refiner")


def parse_grid(text: str) -> tuple:
    """'6x4x2' -> (6, 4, 2); '' -> () (no grid pooling)."""
    from mmapps.errors import UserError

    if not text.strip():
        return ()
    try:
        cells = tuple(int(n) for n in text.lower().split("x"))
    except ValueError:
        cells = ()
    if len(cells) != 3 or min(cells) < 1 or max(cells) > 16:
        raise UserError(f"--grid must be three cell counts 1-16 as LxWxH (e.g. 6x4x2); got {text!r}")
    return cells


# ----------------------------------------------------------------------------------------------- evaluate
@app.command()
def evaluate(data: Path = typer.Argument(..., help="labelled KITTI folder (root or training/)"),
             model: Optional[Path] = MODEL_OPT,
             method: str = typer.Option("learned", "--method", help="learned or classical"),
             ablations: bool = typer.Option(True, "--ablations/--no-ablations", help="lidar-only / camera-only too"),
             limit: Optional[int] = typer.Option(None, "--limit", min=1, help="evaluate only the first N frames"),
             shard: Optional[str] = SHARD_OPT,
             workers: int = WORKERS_OPT,
             device: str = DEVICE_OPT,
             json_out: bool = JSON_OPT):
    """KITTI AP (R40) 3D and BEV per class and difficulty, plus modality ablations."""

    def go():
        from mmapps.parallel import parse_shard, shard_items

        from .evaluate import evaluate_split
        from .io import list_frames, resolve_split
        from .pipeline import load_pipeline

        split = resolve_split(data)
        ids = list_frames(split)
        check_interrupted(split)
        ids = shard_items(ids, *parse_shard(shard))[: limit or None]
        pipe = load_pipeline(model, device, method)
        return evaluate_split(split, pipe, ids, ablations, workers)

    res = run_command(go)
    if json_out:
        emit_json(res)
        return
    rows = [{"class": c, "metric": m, **(res[m][c] or {})} for m in ("ap3d", "apbev") for c in res[m]]
    print_table(rows, f"driving evaluate ({res['method']}, {res['frames']} frames of {res['split']})")


# ----------------------------------------------------------------------------------------------- perceive
def check_interrupted(split, ids=()) -> None:
    """A synthetic split whose synth run was interrupted: a frame it never finished is an error that says how to
    finish the run; otherwise a warning on stderr (the finished frames are complete and usable)."""
    from mmapps.errors import UserError

    from .synth import interrupted_note

    note = interrupted_note(split)
    if note is None:
        return
    if any(not (Path(split) / "velodyne" / f"{fid}.bin").is_file() for fid in ids):
        raise UserError(note)
    console.print(f"warning: {note}", highlight=False)


@dataclass
class FrameSource:
    """Where perceive's frames come from: a KITTI folder (all frames or --frame ids) or single files."""

    folder: Optional[Path] = None
    frame_ids: Optional[str] = None
    lidar: Optional[Path] = None
    image: Optional[Path] = None
    calib: Optional[Path] = None
    oxts: Optional[Path] = None
    point_dims: int = 4

    def loaders(self) -> tuple[list, str]:
        """([callable -> Frame], the folder used); nothing is read yet."""
        from mmapps.errors import UserError

        from .io import list_frames, load_files, load_frame, resolve_split

        if self.folder is None:
            if not (self.lidar and self.image and self.calib):
                raise UserError("give a KITTI folder INPUT, or --lidar, --image and --calib together")
            return [lambda: load_files(self.lidar, self.image, self.calib, self.oxts, self.point_dims)], \
                str(self.lidar.parent)
        if self.lidar or self.image or self.calib or self.oxts:
            raise UserError("give either a KITTI folder INPUT or --lidar/--image/--calib, not both")
        split = resolve_split(self.folder)
        ids = [f.strip() for f in self.frame_ids.split(",")] if self.frame_ids else list_frames(split)
        check_interrupted(split, ids)
        return [lambda fid=fid: load_frame(split, fid, dims=self.point_dims) for fid in ids], str(split)


@dataclass
class PerceiveOptions:
    """How perceive runs and what it writes."""

    out: Optional[Path] = None
    model: Optional[Path] = None
    method: str = "learned"
    device: str = "auto"
    modalities: str = ""  # "": the model's default sensors (its checkpoint meta)


def run_perceive(source: FrameSource, opts: PerceiveOptions) -> list[dict]:
    """Each frame is read once and detected once. Pictures and result files go to a staging folder inside
    ``out`` and are moved into place only when every frame succeeded: a bad frame leaves no partial output."""
    import os
    import shutil
    import tempfile

    from mmapps.cli_utils import check_output_dir

    from .io import write_label
    from .pipeline import load_pipeline
    from .tracking import Tracker
    from .viz import bev_png, camera_png, label_boxes

    if opts.out is not None:
        check_output_dir(opts.out)
    loaders, used = source.loaders()
    chosen = [m.strip() for m in opts.modalities.split(",") if m.strip()]
    pipe = load_pipeline(opts.model, opts.device, opts.method, modalities=chosen or None)
    tracker = Tracker()
    staging = None
    if opts.out is not None:
        opts.out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".perceive-partial-", dir=opts.out))
    results, written = [], []
    try:
        for i, load in enumerate(loaders):
            f = load()
            if i == 0:
                pipe.warm_up(f)  # untimed: one-off first-pass costs are not a per-frame latency
            res = pipe.perceive(f, tracker)
            kitti = res.pop("kitti")
            res["input"] = used
            if staging is not None:
                names = [f"{f.id}.txt", f"{f.id}_bev.png", f"{f.id}_camera.png"]
                write_label(staging / names[0], kitti)
                labelled = label_boxes(f)  # drawn dashed when the folder has label_2
                bev_png(staging / names[1], f, res["objects"], labelled)
                camera_png(staging / names[2], f, res["objects"], labelled)
                written += names
                res["outputs"] = [str(opts.out / n) for n in names]
            results.append(res)
        for name in written:
            os.replace(staging / name, opts.out / name)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    _print_warnings(results)
    return results


def _print_warnings(results: list[dict]) -> None:
    """The first warned frame's warnings on stderr, and how many more frames have some (a folder of 0-255 clouds
    would otherwise repeat one line per frame). Only once every frame succeeded: a failed run prints its error only."""
    warned = [res for res in results if res["warnings"]]
    for note in warned[0]["warnings"] if warned else []:
        console.print(f"warning: frame {warned[0]['frame']}: {note}", highlight=False)
    if len(warned) > 1:
        console.print(f"warning: {len(warned) - 1} more frame(s) with warnings (each JSON line lists its own)",
                      highlight=False)


@app.command()
def perceive(input: Optional[Path] = typer.Argument(None, help="KITTI folder (root or training/ or a folder with velodyne/)"),
             frame: Optional[str] = typer.Option(None, "--frame", help="frame id(s), comma-separated (default: all)"),
             out: Optional[Path] = OUT_OPT,
             lidar: Optional[Path] = typer.Option(None, "--lidar", help="single-file mode: velodyne .bin"),
             image: Optional[Path] = typer.Option(None, "--image", help="single-file mode: camera PNG"),
             calib: Optional[Path] = typer.Option(None, "--calib", help="single-file mode: KITTI calib .txt"),
             oxts: Optional[Path] = typer.Option(None, "--oxts", help="single-file mode: oxts packet (30 fields)"),
             point_dims: int = typer.Option(4, "--point-dims", help="4 (KITTI) or 5 (nuScenes .bin)"),
             model: Optional[Path] = MODEL_OPT,
             method: str = typer.Option("learned", "--method", help="learned or classical"),
             modalities: str = typer.Option("", "--modalities", help="sensors the learned model uses: lidar,camera or lidar "
                                                      "(default: the model card's choice)"),
             device: str = DEVICE_OPT,
             json_out: bool = JSON_OPT):
    """Detect objects in each frame: KITTI result file, BEV and camera pictures (with --out), JSON with latency."""
    source = FrameSource(input, frame, lidar, image, calib, oxts, point_dims)
    results = run_command(run_perceive, source, PerceiveOptions(out, model, method, device, modalities))
    if json_out:
        for res in results:
            emit_json(res)
        return
    rows = []
    for res in results:
        rows += [{"frame": res["frame"], "class": o["class"], "score": o["score"], "x": o["box3d"]["x"],
                  "y": o["box3d"]["y"], "track": o.get("track_id"), "latency_ms": res["latency_ms"]}
                 for o in res["objects"]] or [{"frame": res["frame"], "class": "-", "latency_ms": res["latency_ms"]}]
    print_table(rows, f"driving perceive ({results[0]['input'] if results else '-'})")


# ----------------------------------------------------------------------------------------------- demo hook
def demo(out_dir: Path) -> dict:
    """Run the bundled model on the bundled sample sequence; pictures into out_dir (called by `mmapps demo`)."""
    from mmapps.paths import data_dir

    from .io import list_frames, load_frame, write_label
    from .pipeline import Pipeline
    from .tracking import Tracker
    from .viz import bev_png, camera_png, label_boxes

    split = data_dir() / "driving" / SAMPLES / "training"
    pipe = Pipeline.from_checkpoint()
    tracker = Tracker()
    out_dir = Path(out_dir)
    frames = []
    for i, fid in enumerate(list_frames(split)):
        f = load_frame(split, fid)
        if i == 0:
            pipe.warm_up(f)  # as perceive does: latency_ms is the per-frame cost, not the first pass's one-off costs
        res = pipe.perceive(f, tracker)
        write_label(out_dir / f"{fid}.txt", res.pop("kitti"))
        bev_png(out_dir / f"{fid}_bev.png", f, res["objects"], label_boxes(f))
        camera_png(out_dir / f"{fid}_camera.png", f, res["objects"], label_boxes(f))
        frames.append({"frame": fid, "objects": len(res["objects"]), "labelled": len(
            [o for o in f.labels or [] if o.type != "DontCare"]), "latency_ms": res["latency_ms"],
            "tracks": sorted({o.get("track_id") for o in res["objects"]})})
    return {"frames": frames, "pictures": str(out_dir)}
