"""The driving Python API: load a checkpoint, preprocess a frame, detect, postprocess, track.

    from driving import Pipeline
    pipe = Pipeline.from_checkpoint()            # the bundled model; rebuilt from the file alone
    result = pipe.perceive(frame)                # -> JSON-ready dict (objects, latency_ms)
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmapps.errors import UserError
from mmapps.trainer import TrainConfig

from .io import (CLASSES, Calib, Frame, Object3D, label_to_lidar_box, lidar_box_to_label, lidar_to_world,
                 list_frames, load_frame, oxts_pose)
from .models import (BEVFusionDetector, ClassicalConfig, DetectorConfig, camera_input, classical_detect, decode,
                     encode_targets, lidar_bev, projection)

METHODS = ("learned", "classical")
ABLATIONS = {"fusion": ("lidar", "camera"), "lidar_only": ("lidar",), "camera_only": ("camera",)}


# ----------------------------------------------------------------------------------------------- samples
def gt_boxes(frame: Frame, cfg: DetectorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Lidar-frame boxes and class indices of the labelled objects of our classes."""
    boxes, cls = [], []
    for o in frame.labels or []:
        if o.type in cfg.classes:
            boxes.append(label_to_lidar_box(o, frame.calib))
            cls.append(cfg.classes.index(o.type))
    return np.array(boxes).reshape(-1, 7), np.array(cls, dtype=np.int64)


def make_sample(frame: Frame, cfg: DetectorConfig, targets: bool = False, flip: bool = False) -> dict:
    """Frame -> the model's sample dict; flip mirrors lidar (y -> -y), image and projection consistently."""
    points = frame.points
    image = frame.image
    proj = projection(frame.calib, image.shape)
    if flip:
        points = points * np.array([1, -1, 1, 1], np.float32)
        image = image[:, ::-1]
        # u' = -u for the mirrored point: flip the first output row and the input y column
        proj = proj.clone()
        proj[0] = -proj[0]
        proj[:, 1] = -proj[:, 1]
    sample = {"lidar": lidar_bev(points, cfg), "camera": camera_input(image, cfg), "proj": proj,
              "meta": {"frame": frame.id}}
    if targets:
        boxes, cls = gt_boxes(frame, cfg)
        if flip and len(boxes):
            boxes[:, 1] *= -1
            boxes[:, 6] *= -1
        sample["targets"] = encode_targets(boxes, cls, cfg)
    return sample


class FrameDataset(torch.utils.data.Dataset):
    """KITTI frames as training samples; preprocessed inputs are cached in memory (float16)."""

    def __init__(self, split, ids, cfg: DetectorConfig, train: bool = False):
        self.split, self.ids, self.cfg, self.train = Path(split), list(ids), cfg, train
        self._cache: dict[tuple, dict] = {}

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        flip = bool(self.train and np.random.random() < 0.5)
        key = (i, flip)
        if key not in self._cache:
            frame = load_frame(self.split, self.ids[i])
            s = make_sample(frame, self.cfg, targets=True, flip=flip)
            s["lidar"] = s["lidar"].half()
            s["camera"] = s["camera"].half()
            s["targets"]["heatmap"] = s["targets"]["heatmap"].half()
            s["targets"]["regression"] = s["targets"]["regression"].half()
            self._cache[key] = s
        s = self._cache[key]
        out = dict(s)
        out["lidar"], out["camera"] = s["lidar"].float(), s["camera"].float()
        out["targets"] = {**s["targets"], "heatmap": s["targets"]["heatmap"].float(),
                          "regression": s["targets"]["regression"].float()}
        return out


# ----------------------------------------------------------------------------------------------- tracking
@dataclass
class Track:
    id: int
    cls: str
    x: np.ndarray  # [px, py, vx, vy] in the world (or first-frame) plane
    P: np.ndarray
    misses: int = 0
    hits: int = 1


class Tracker:
    """Constant-velocity Kalman filter per object in a fixed world plane (ego motion removed via oxts)."""

    def __init__(self, dt: float = 0.1, gate: float = 2.5, max_misses: int = 2):
        self.dt, self.gate, self.max_misses = dt, gate, max_misses
        self.tracks: list[Track] = []
        self.next_id = 1
        self.origin: np.ndarray | None = None
        self.scale: float | None = None

    def _to_world(self, frame: Frame, xy: np.ndarray) -> tuple[np.ndarray, float]:
        """Lidar xy -> world plane xy, and the ego yaw (no oxts: the lidar frame itself)."""
        if frame.oxts is None:
            return xy, 0.0
        if self.scale is None:
            self.scale = math.cos(math.radians(frame.oxts[0]))
        T = oxts_pose(frame.oxts, self.scale) @ np.linalg.inv(Calib._h(frame.calib.I2V))
        if self.origin is None:
            self.origin = T[:2, 3].copy()
        p = np.c_[xy, np.zeros(len(xy)), np.ones(len(xy))] @ T.T
        return p[:, :2] - self.origin, math.atan2(T[1, 0], T[0, 0])

    def update(self, frame: Frame, objects: list[dict]) -> None:
        """Predict, associate greedily by distance within the gate (same class), update; sets track_id/velocity."""
        F = np.eye(4)
        F[0, 2] = F[1, 3] = self.dt
        Q = np.diag([0.05, 0.05, 0.5, 0.5])
        R = np.diag([0.1, 0.1])
        H = np.eye(2, 4)
        for t in self.tracks:
            t.x = F @ t.x
            t.P = F @ t.P @ F.T + Q
        xy = np.array([[o["box3d"]["x"], o["box3d"]["y"]] for o in objects]).reshape(-1, 2)
        world, ego_yaw = self._to_world(frame, xy)
        pairs = sorted((np.linalg.norm(t.x[:2] - world[j]), ti, j) for ti, t in enumerate(self.tracks)
                       for j, o in enumerate(objects) if t.cls == o["class"])
        used_t, used_o = set(), set()
        for d, ti, j in pairs:
            if d > self.gate or ti in used_t or j in used_o:
                continue
            t = self.tracks[ti]
            S = H @ t.P @ H.T + R
            K = t.P @ H.T @ np.linalg.inv(S)
            t.x = t.x + K @ (world[j] - H @ t.x)
            t.P = (np.eye(4) - K @ H) @ t.P
            t.misses, t.hits = 0, t.hits + 1
            used_t.add(ti)
            used_o.add(j)
            self._annotate(objects[j], t, ego_yaw)
        for j, o in enumerate(objects):
            if j not in used_o:
                t = Track(self.next_id, o["class"], np.r_[world[j], 0.0, 0.0], np.diag([0.2, 0.2, 10.0, 10.0]))
                self.next_id += 1
                self.tracks.append(t)
                used_t.add(len(self.tracks) - 1)
                self._annotate(o, t, ego_yaw)
        for ti, t in enumerate(self.tracks):
            if ti not in used_t:
                t.misses += 1
        self.tracks = [t for t in self.tracks if t.misses <= self.max_misses]

    @staticmethod
    def _annotate(o: dict, t: Track, ego_yaw: float) -> None:
        v = t.x[2:] if t.hits > 1 else np.zeros(2)
        c, s = math.cos(-ego_yaw), math.sin(-ego_yaw)  # world velocity -> ego (lidar) axes
        o["track_id"] = t.id
        o["velocity"] = {"vx": round(float(c * v[0] - s * v[1]), 3), "vy": round(float(s * v[0] + c * v[1]), 3),
                         "speed": round(float(np.hypot(*v)), 3), "frame": "lidar"}


# ----------------------------------------------------------------------------------------------- pipeline
@dataclass
class Pipeline:
    model: BEVFusionDetector | None
    cfg: DetectorConfig
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    method: str = "learned"
    score_thresh: float = 0.3
    meta: dict = field(default_factory=dict)
    classical_cfg: ClassicalConfig = field(default_factory=ClassicalConfig)
    model_path: str | None = None

    @classmethod
    def from_checkpoint(cls, path=None, device: str = "auto", method: str = "learned", **kw) -> "Pipeline":
        """Rebuild the detector from the checkpoint's config alone (default: the bundled model)."""
        from mmapps.checkpoint import load_checkpoint, load_state
        from mmapps.device import resolve_device
        from mmapps.errors import check_choice
        from mmapps.paths import bundled_model

        check_choice("--method", method, METHODS)
        dev = resolve_device(device)
        if method == "classical" and path is None:
            return cls(None, DetectorConfig(), dev, "classical", **kw)
        path = Path(path) if path is not None else bundled_model("driving")
        bundle = load_checkpoint(path)
        if bundle["config"].get("kind") != "bev_fusion_detector":
            raise UserError(f"{path}: not a driving detector checkpoint (config kind "
                            f"{bundle['config'].get('kind')!r})")
        cfg = DetectorConfig.from_dict(bundle["config"]["detector"])
        model = load_state(BEVFusionDetector(cfg), bundle, path).to(dev).eval()
        return cls(model, cfg, dev, method, meta=bundle.get("meta", {}), model_path=str(path), **kw)

    # -- detection --------------------------------------------------------------------------------
    threads: int | None = 1

    def detect(self, frame: Frame, modalities=("lidar", "camera")) -> list[dict]:
        """Lidar-frame detections [{"class", "score", "box3d": array[7]}], camera-view objects only.

        Runs with ``threads`` intra-op threads (default 1): the model is sized for one core, and on shared
        CPUs multi-threaded kernels stall at their barriers (measured: 42 ms median with 1 thread vs
        170 ms with 2 while other jobs ran)."""
        if self.threads is None or self.device.type != "cpu":
            return self._detect(frame, modalities)
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self._detect(frame, modalities)
        finally:
            torch.set_num_threads(before)

    @torch.inference_mode()
    def _detect(self, frame: Frame, modalities) -> list[dict]:
        if self.method == "classical":
            dets = classical_detect(frame.points, self.classical_cfg)
        else:
            s = make_sample(frame, self.cfg)
            batch = {"lidar": s["lidar"][None].to(self.device), "camera": s["camera"][None].to(self.device),
                     "proj": s["proj"][None].to(self.device),
                     "present": {m: torch.tensor([m in modalities], device=self.device) for m in ("lidar", "camera")}}
            out = self.model(batch)
            dets = decode({k: v.cpu() for k, v in out.items() if k in ("heatmap", "regression")}, self.cfg,
                          self.score_thresh)[0]
        return [d for d in dets if _in_view(d["box3d"], frame)]

    def timed_detect(self, frame: Frame, repeats: int = 3) -> tuple[list[dict], float]:
        """Detections and latency (ms, loaded arrays -> boxes): median of ``repeats`` runs after a warm-up,
        because shared CPUs make single timings noisy."""
        dets = self.detect(frame)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            dets = self.detect(frame)
            times.append((time.perf_counter() - t0) * 1000)
        return dets, statistics.median(times)

    def to_objects(self, frame: Frame, dets: list[dict]) -> list[Object3D]:
        shape = frame.image.shape if frame.image is not None else None
        return [lidar_box_to_label(d["box3d"], frame.calib, d["class"], round(d["score"], 4), shape) for d in dets]

    def perceive(self, frame: Frame, tracker: Tracker | None = None, timing_repeats: int = 3) -> dict:
        """One frame -> {"frame", "objects": [...], "latency_ms"} (+ "kitti": result Object3D list)."""
        dets, latency = self.timed_detect(frame, timing_repeats)
        labels = self.to_objects(frame, dets)
        objects = []
        world = lidar_to_world(np.array([d["box3d"][:3] for d in dets]).reshape(-1, 3), frame.oxts, frame.calib) \
            if frame.oxts is not None and dets else None
        for k, (d, lab) in enumerate(zip(dets, labels)):
            b = d["box3d"]
            o = {"class": d["class"], "score": round(float(d["score"]), 4),
                 "box3d": {key: round(float(v), 3) for key, v in zip(("x", "y", "z", "l", "w", "h", "yaw"), b)},
                 "box2d": [round(v, 1) for v in lab.box2d]}
            if world is not None:
                o["world"] = {"lat": round(float(world[k, 0]), 8), "lon": round(float(world[k, 1]), 8)}
            objects.append(o)
        if tracker is not None:
            tracker.update(frame, objects)
        return {"frame": frame.id, "objects": objects, "latency_ms": round(latency, 1), "method": self.method,
                "kitti": labels}


def _in_view(box, frame: Frame) -> bool:
    """KITTI labels only cover the camera view: keep boxes whose centre projects into the image."""
    if frame.image is None:
        return True
    uv, depth = frame.calib.lidar_to_image(np.asarray(box[:3])[None])
    H, W = frame.image.shape[:2]
    return bool(depth[0] > 0.5 and 0 <= uv[0, 0] < W and 0 <= uv[0, 1] < H + 50)


# ----------------------------------------------------------------------------------------------- evaluation
def evaluate_split(split, pipe: Pipeline, ids=None, ablations: bool = True, workers: int = 1) -> dict:
    """KITTI AP of the pipeline on a labelled split, plus modality ablations for the learned model."""
    from mmapps.progress import track

    from .evaluate import kitti_ap, recall_within

    ids = list(ids) if ids is not None else list_frames(Path(split))
    # AP integrates over the whole score range: keep low-scored boxes too (perceive reports >= 0.3)
    pipe = copy.copy(pipe)
    pipe.score_thresh = min(pipe.score_thresh, 0.1)
    modes = ABLATIONS if (ablations and pipe.method == "learned") else {"fusion": ("lidar", "camera")}
    if workers > 1 and len(ids) > 1:
        from mmapps.parallel import parallel_map

        # each process rebuilds the pipeline from the same checkpoint; frames are split in chunks
        n = min(workers, len(ids))
        chunks = [(str(split), ids[i::n], pipe.model_path, pipe.method, pipe.score_thresh, modes) for i in range(n)]
        parts = parallel_map(_detect_chunk, chunks, n, "evaluating")
        order = {fid: k for k, fid in enumerate(ids)}
        rows = sorted((r for part in parts for r in part), key=lambda r: order[r[0]])
    else:
        rows = [_detect_one(split, fid, pipe, modes) for fid in track(ids, "evaluating")]
    gts = [r[1] for r in rows]
    dets = {m: [r[2][m] for r in rows] for m in modes}
    main = kitti_ap(gts, dets["fusion"])
    result = {"split": str(split), "frames": len(ids), "method": pipe.method, **main,
              "car_recall_40m": recall_within(gts, dets["fusion"], "Car", 40.0, 0.5, "bev")}
    if len(modes) > 1:
        result["ablations"] = {}
        for m in modes:
            ap = main if m == "fusion" else kitti_ap(gts, dets[m])
            result["ablations"][m] = {"ap3d": ap["ap3d"], "apbev": ap["apbev"]}
    else:
        result["ablations"] = {}
    return result


def _detect_one(split, fid, pipe: Pipeline, modes) -> tuple:
    frame = load_frame(split, fid)
    if frame.labels is None:
        raise UserError(f"{Path(split) / 'label_2' / (fid + '.txt')}: evaluation needs labels")
    return fid, frame.labels, {m: pipe.to_objects(frame, pipe.detect(frame, mods)) for m, mods in modes.items()}


def _detect_chunk(args) -> list[tuple]:
    split, ids, model_path, method, thresh, modes = args
    torch.set_num_threads(1)  # one process per core
    pipe = Pipeline.from_checkpoint(model_path, "cpu", method, score_thresh=thresh)
    return [_detect_one(split, fid, pipe, modes) for fid in ids]


def train(data, out, detector: DetectorConfig, train_cfg, val=None, val_fraction: float = 0.1,
          resume: bool = False, quiet: bool = False) -> dict:
    """Train the fusion detector with the core Trainer (DDP under torchrun); returns the history summary."""
    from mmapps.trainer import Trainer

    from .io import resolve_split

    split = resolve_split(data)
    ids = list_frames(split)
    if val is not None:
        vsplit, vids, tids = resolve_split(val), None, ids
        vids = list_frames(vsplit)
    else:
        rng = np.random.default_rng(train_cfg.seed)
        perm = rng.permutation(len(ids))
        nv = max(1, int(len(ids) * val_fraction)) if len(ids) > 1 else 0
        vids = [ids[i] for i in sorted(perm[:nv])]
        tids = [ids[i] for i in sorted(perm[nv:])]
        vsplit = split
    for fid in tids[:1]:
        if load_frame(split, fid).labels is None:
            raise UserError(f"{split / 'label_2'}: training needs label_2 files")
    model = BEVFusionDetector(detector)
    trainer = Trainer(model, train_cfg, out, meta={"classes": list(detector.classes), "data": str(split),
                                                   "train_frames": len(tids), "val_frames": len(vids or [])},
                      model_config={"kind": "bev_fusion_detector", "detector": detector.to_dict()},
                      input_keys=("lidar", "camera"), quiet=quiet)
    history = trainer.fit(FrameDataset(split, tids, detector, train=True),
                          FrameDataset(vsplit, vids, detector) if vids else None, resume=resume)
    return {"out": str(out), "epochs": len(history), "history": history[-1] if history else None,
            "train_frames": len(tids), "val_frames": len(vids or [])}


def _default_train():
    from mmapps.trainer import TrainConfig

    # The bundled model's recipe: small batches (CPU), one-cycle-like warm cosine, a few epochs.
    return TrainConfig(epochs=10, batch_size=8, lr=2e-3, weight_decay=1e-4, scheduler="cosine", grad_clip=5.0,
                       patience=4, monitor="val_loss", mode="min", amp=True)


@dataclass
class TrainSettings:
    """`mmapps driving train --config F --set train.x=.. --set model.y=..`"""
    train: "TrainConfig" = field(default_factory=_default_train)
    model: DetectorConfig = field(default_factory=DetectorConfig)
