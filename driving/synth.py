"""Synthetic KITTI-format road scenes, ray-cast with open3d's RaycastingScene.

One procedural scene per sequence (``driving.scene``: road, kerbs, buildings or car parks, clutter, parked and moving
cars, vans, trucks, pedestrians, cyclists). Per frame the ego vehicle moves along its heading; an HDL-64E lidar (its
elevation table) and a pinhole camera at KITTI's intrinsics are ray-cast from the same scene. Labels (with truncation and
occlusion measured on the render), calib and an oxts packet with GPS noise are written in KITTI format,
so the same loaders serve synthetic and real data. Same seed -> same bytes.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .io import Calib, Object3D, lidar_box_to_label, project_box2d, wrap_angle
from .scene import DT, LIDAR_HEIGHT, Thing, _rx, _ry, _rz, agent_meshes, box_mesh, make_scene  # noqa: F401

IMAGE_W, IMAGE_H = 1242, 375
# KITTI intrinsics (P2 of the object benchmark) without the stereo baseline column: the camera is the origin.
K = np.array([[721.5377, 0.0, 609.5593], [0.0, 721.5377, 172.854], [0.0, 0.0, 1.0]])
# Camera 0.27 m ahead of and 0.08 m below the lidar, as on the KITTI car (x_cam=-y, y_cam=-z, z_cam=x).
R_VELO_CAM = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
CAM_IN_VELO = np.array([0.27, 0.0, -0.08])
IMU_IN_VELO = np.array([-0.81, 0.32, -0.80])  # lidar <- imu offset, close to KITTI's Tr_imu_to_velo
LAT0, LON0 = 49.011, 8.423  # Karlsruhe, where KITTI drove

# Median reflectance per material, close to real HDL-64E sweeps (KITTI car paint: median ~0.06, half below 0.05);
# each object draws its own factor around it (log-normal), and a few hits are retro-reflective (plates, signs).
REFLECTANCE = {"ground": 0.12, "road": 0.22, "marking": 0.6, "kerb": 0.25, "building": 0.3, "tree": 0.25,
               "pole": 0.35, "Car": 0.08, "Pedestrian": 0.15, "Cyclist": 0.15, "Van": 0.07, "Truck": 0.1,
               "clutter": 0.2, "vegetation": 0.3}
# Foliage is porous: a lidar ray enters a hedge, bush or crown and returns from a leaf somewhere inside it, so its
# hits scatter in depth (exponential, mean 0.4 m) and many rays pass through or come back too weak (dropout).
VEGETATION = {"vegetation"}
FOLIAGE_DEPTH = 0.4
FOLIAGE_DROPOUT = 0.3
# HDL-64E elevation table: the upper block's 32 lasers at ~1/3 degree spacing, the lower block's at ~1/2 degree.
HDL64_ELEVATION_DEG = np.r_[np.linspace(2.0, -8.33, 32), np.linspace(-8.87, -24.87, 32)]


def synth_calib() -> Calib:
    V2C = np.hstack([R_VELO_CAM, (-R_VELO_CAM @ CAM_IN_VELO)[:, None]])
    I2V = np.hstack([np.eye(3), IMU_IN_VELO[:, None]])
    return Calib(np.hstack([K, np.zeros((3, 1))]), np.eye(3), V2C, I2V)



# ----------------------------------------------------------------------------------------------- sensors
def lidar_rays(rng):
    """HDL-64E: its two laser blocks' elevation table (+2..-24.9 deg), ~0.17 deg azimuth steps (~135k rays)."""
    elev = np.deg2rad(HDL64_ELEVATION_DEG) + rng.normal(0, 0.0008, 64)
    az = np.deg2rad(np.arange(0, 360, 0.17)) + rng.uniform(0, np.deg2rad(0.17))
    E, A = np.meshgrid(elev, az, indexing="ij")
    return np.stack([np.cos(E) * np.cos(A), np.cos(E) * np.sin(A), np.sin(E)], -1).reshape(-1, 3)


def camera_rays():
    """Unit directions (lidar frame) through every pixel centre of the KITTI-size image."""
    u, v = np.meshgrid(np.arange(IMAGE_W) + 0.5, np.arange(IMAGE_H) + 0.5)
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    d = d_cam @ R_VELO_CAM  # cam -> velo rotation is R^T; row vectors: d @ R
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def render_frame(static, agents, info, k, rng, rays_cam):
    """Ray-cast one frame k of the sequence; returns points, image, labels, ego pose."""
    import open3d as o3d

    ego_yaw = info.get("yaw", 0.0) + float(rng.normal(0, 0.01))
    travelled = info["ego_speed"] * k * DT
    ego = np.array([travelled * math.cos(ego_yaw), info["ego_y"] + travelled * math.sin(ego_yaw),
                    info.get("height", LIDAR_HEIGHT)])
    Rw = _rz(ego_yaw) @ _ry(info.get("pitch", 0.0)) @ _rx(info.get("roll", 0.0))  # lidar -> world rotation
    scene = o3d.t.geometry.RaycastingScene()
    geo_owner, kinds, colours, rfactor = [], [], [], []
    mat_rng = np.random.default_rng(int(rng.integers(1 << 31)))
    span, rh = info["span"], info["road_half"]
    ground = box_mesh(span[1] - span[0] + 200, 400, 0.02, ((span[0] + span[1]) / 2, 0, -0.01))
    for thing, meshes in [(Thing("ground", (0.3, 0.3, 0.32)), [ground])] + static:
        for m in meshes:
            scene.add_triangles(m)
            geo_owner.append(-1)
            kinds.append(thing.kind)
            colours.append(thing.colour)
            rfactor.append(float(mat_rng.lognormal(0, 0.3)))
    boxes_w = []
    for i, (thing, kind) in enumerate(agents):
        box = thing.box.copy()
        box[:2] += thing.vel * k * DT
        boxes_w.append(box)
        paint = float(np.random.default_rng([i, 11]).lognormal(0, 0.6))  # dark .. light paint and clothes
        for m in agent_meshes(kind, box, np.random.default_rng(i)):
            scene.add_triangles(m)
            geo_owner.append(i)
            kinds.append(kind)
            colours.append(thing.colour)
            rfactor.append(paint)
    geo_owner = np.array(geo_owner + [-2])  # index -1 (miss) -> -2
    kinds = np.array(kinds + ["sky"])
    colours = np.array(colours + [(0.6, 0.75, 0.95)])
    rfactor = np.array(rfactor + [1.0])

    def cast(dirs_velo):
        d = (dirs_velo @ Rw.T).astype(np.float32)
        o = np.broadcast_to(ego.astype(np.float32), d.shape)
        ans = scene.cast_rays(o3d.core.Tensor(np.ascontiguousarray(np.c_[o, d])))
        t = ans["t_hit"].numpy()
        gid = ans["geometry_ids"].numpy().astype(np.int64)
        gid[~np.isfinite(t)] = -1
        return t, gid, ans["primitive_normals"].numpy()

    # ---- lidar
    dirs = lidar_rays(rng)
    t, gid, nrm = cast(dirs)
    # dropouts: a base rate, more at grazing incidence and for far, dark surfaces
    cos_all = np.abs((nrm * (dirs @ Rw.T)).sum(1))
    dark_far = (np.isin(kinds[gid], ["Car", "Van", "Truck"])) & (t > 30)
    foliage = np.isin(kinds[gid], list(VEGETATION))  # misses map to "sky"
    p_drop = 0.05 + 0.35 * (1 - cos_all) ** 3 + 0.25 * dark_far + FOLIAGE_DROPOUT * foliage
    keep = np.isfinite(t) & (t < 120) & (t > 2.0) & (rng.random(len(t)) > p_drop)
    t = t[keep] + rng.normal(0, 0.02, keep.sum()) + foliage[keep] * rng.exponential(FOLIAGE_DEPTH, keep.sum())
    pts = dirs[keep] * t[:, None]
    kd = kinds[gid[keep]]
    hitw = ego + (dirs[keep] * t[:, None]) @ Rw.T
    refl = np.array([REFLECTANCE.get(x, 0.2) for x in kd]) * rfactor[gid[keep]]
    refl = np.where((kd == "ground") & (np.abs(hitw[:, 1]) < rh), REFLECTANCE["road"], refl)
    refl = np.where((kd == "ground") & (np.abs(np.abs(hitw[:, 1]) - rh + 0.3) < 0.08), REFLECTANCE["marking"], refl)
    cosi = np.abs((nrm[keep] * (dirs[keep] @ Rw.T)).sum(1))
    cosi = np.where(foliage[keep], rng.uniform(0, 1, len(cosi)), cosi)  # leaves face every way
    refl = refl * (0.4 + 0.6 * cosi) + np.abs(rng.normal(0, 0.01, len(refl)))
    plates = np.isin(kd, ["Car", "Van", "Truck"]) & (rng.random(len(refl)) < 0.01)  # retro-reflective plates
    refl = np.clip(np.where(plates, rng.uniform(0.6, 0.99, len(refl)), refl), 0, 0.99)
    points = np.c_[pts, refl].astype(np.float32)

    # ---- camera (same scene, from the camera centre)
    cam = ego + Rw @ CAM_IN_VELO
    d = (rays_cam @ Rw.T).astype(np.float32)
    ans = scene.cast_rays(o3d.core.Tensor(np.ascontiguousarray(np.c_[np.broadcast_to(cam.astype(np.float32), d.shape), d])))
    tc = ans["t_hit"].numpy()
    gc = ans["geometry_ids"].numpy().astype(np.int64)
    gc[~np.isfinite(tc)] = -1
    nc = ans["primitive_normals"].numpy()
    light = np.array([0.4, 0.3, 0.85])
    light /= np.linalg.norm(light)
    shade = 0.35 + 0.65 * np.clip(nc @ light, 0, 1)
    col = colours[gc] * shade[:, None]
    hit = cam + d * np.where(np.isfinite(tc), tc, 0)[:, None]
    ground = kinds[gc] == "ground"
    on_road = ground & (np.abs(hit[:, 1]) < rh)
    col[ground & ~on_road] = (0.35, 0.45, 0.25)  # verge
    col[on_road] = (0.33, 0.33, 0.35)
    dashes = on_road & (np.abs(hit[:, 1]) < 0.08) & ((hit[:, 0] % 6) < 3)
    col[dashes] = (0.9, 0.9, 0.9)
    sky = gc < 0
    vv = np.repeat(np.arange(IMAGE_H), IMAGE_W)
    col[sky] = np.c_[0.55 + 0.3 * vv[sky] / IMAGE_H, 0.7 + 0.2 * vv[sky] / IMAGE_H, np.full(sky.sum(), 0.95)]
    fog = np.clip(np.where(np.isfinite(tc), tc, 0) / 250, 0, 0.5)[:, None]  # aerial perspective
    col = col * (1 - fog) + 0.75 * fog
    # photometric randomisation: exposure, contrast and a colour cast per frame, then sensor noise
    col = (col - 0.5) * rng.uniform(0.75, 1.25) + 0.5 + rng.uniform(-0.12, 0.12)
    col = col * rng.uniform(0.9, 1.1, 3) + rng.normal(0, 0.02, col.shape)
    image = (np.clip(col, 0, 1) * 255).astype(np.uint8).reshape(IMAGE_H, IMAGE_W, 3)
    owner_px = geo_owner[gc].reshape(IMAGE_H, IMAGE_W)

    # ---- labels: boxes in the lidar frame, truncation/occlusion from the render
    calib = synth_calib()
    lidar_owner = geo_owner[gid[keep]]
    labels = []
    for i, (thing, kind) in enumerate(agents):
        bw = boxes_w[i]
        c = Rw.T @ (bw[:3] - ego)
        box = np.array([*c, bw[3], bw[4], bw[5], wrap_angle(bw[6] - ego_yaw)])
        if box[0] < 1.0:
            continue  # behind the camera: KITTI labels only objects in the camera view
        full = project_box2d(box, calib)
        clip = project_box2d(box, calib, (IMAGE_H, IMAGE_W))
        area_full = max(full[2] - full[0], 0) * max(full[3] - full[1], 0)
        area_clip = max(clip[2] - clip[0], 0) * max(clip[3] - clip[1], 0)
        if area_clip < 4 or area_full <= 0:
            continue
        trunc = float(np.clip(1 - area_clip / area_full, 0, 1))
        visible = int((owner_px == i).sum())
        alone = _alone_pixels(kind, bw, cam, Rw, clip, i)
        npts = int((lidar_owner == i).sum())
        if visible == 0 and npts < 5:
            o = lidar_box_to_label(box, calib, "DontCare", None, (IMAGE_H, IMAGE_W))
            labels.append(Object3D("DontCare", -1, -1, -10, o.box2d, -1, -1, -1, -1000, -1000, -1000, -10))
            continue
        frac = 1 - visible / max(alone, 1)
        occ = 0 if frac < 0.2 else (1 if frac < 0.5 else 2)
        o = lidar_box_to_label(box, calib, kind, None, (IMAGE_H, IMAGE_W))
        o.truncated, o.occluded = round(trunc, 2), occ
        labels.append(o)
    return points, image, labels, (ego, ego_yaw), calib


def _alone_pixels(kind, box_w, cam, Rw, clip, seed):
    """Pixels the object would cover with nothing in front: render it alone inside its 2D box."""
    import open3d as o3d

    l, t, r, b = (int(v) for v in clip)
    if r <= l or b <= t:
        return 0
    s = o3d.t.geometry.RaycastingScene()
    for m in agent_meshes(kind, box_w, np.random.default_rng(seed)):
        s.add_triangles(m)
    step = max(1, int(max(r - l, b - t) // 60))  # subsample big boxes, scale the count back
    u, v = np.meshgrid(np.arange(l, r + 1, step) + 0.5, np.arange(t, b + 1, step) + 0.5)
    d = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3) @ R_VELO_CAM
    d = (d / np.linalg.norm(d, axis=1, keepdims=True)) @ Rw.T
    rays = np.c_[np.broadcast_to(cam, d.shape), d].astype(np.float32)
    hit = np.isfinite(s.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy())
    return int(hit.sum()) * step * step


def oxts_packet(ego, ego_yaw, speed, rng) -> np.ndarray:
    """oxts for the IMU pose; positions in Mercator around (LAT0, LON0) with RTK-like ~2 cm GPS noise."""
    from .io import latlon_to_mercator, mercator_to_latlon

    scale = math.cos(math.radians(LAT0))
    ox, oy = latlon_to_mercator(LAT0, LON0, scale)
    imu = ego + _rz(ego_yaw) @ (-IMU_IN_VELO)  # imu position in the world (Tr_imu_to_velo is a pure shift)
    lat, lon = mercator_to_latlon(ox + imu[0] + rng.normal(0, 0.02), oy + imu[1] + rng.normal(0, 0.02), scale)
    p = np.zeros(30)
    p[:6] = [lat, lon, 110.0 + imu[2], rng.normal(0, 0.002), rng.normal(0, 0.002), ego_yaw]
    p[6], p[7], p[8] = speed * math.sin(ego_yaw), speed * math.cos(ego_yaw), speed  # vn, ve, vf
    p[23:30] = [0.1, 0.05, 4, 10, 5, 5, 5]
    return p


# ----------------------------------------------------------------------------------------------- writer
def synth_sequence(args) -> list[str]:
    """Write frames [first, first+n) of one sequence into split/; returns the frame ids."""
    split, seed, seq_index, first, n, seq_len, reduced, clutter = args
    from .io import reduce_to_camera_view, write_image, write_label, write_oxts, write_velodyne
    from mmapps.io import atomic_write_text

    split = Path(split)
    ids = [f"{first + k:06d}" for k in range(n)]
    if all((split / "velodyne" / f"{fid}.bin").is_file() for fid in ids):
        return ids  # finished by an earlier run
    rng = np.random.default_rng([seed, seq_index])
    static, agents, info = make_scene(rng, seq_len, clutter)
    rays_cam = camera_rays()
    ids = []
    for k in range(n):
        fid = f"{first + k:06d}"
        if (split / "velodyne" / f"{fid}.bin").is_file():
            ids.append(fid)  # finished by an earlier, interrupted run: every frame has its own seed, so skip it
            continue
        frng = np.random.default_rng([seed, seq_index, k, 7])
        points, image, labels, (ego, yaw), calib = render_frame(static, agents, info, k, frng, rays_cam)
        if reduced:
            points = reduce_to_camera_view(points, calib, image.shape)
        # every file is written atomically, the velodyne sweep last: a frame is listed only once it is complete
        write_image(split / "image_2" / f"{fid}.png", image)
        write_label(split / "label_2" / f"{fid}.txt", labels)
        atomic_write_text(split / "calib" / f"{fid}.txt", calib.to_text())
        write_oxts(split / "oxts" / f"{fid}.txt", oxts_packet(ego, yaw, info["ego_speed"], frng))
        write_velodyne(split / "velodyne" / f"{fid}.bin", points)
        ids.append(fid)
    return ids


PROGRESS = "synth_progress.json"
SIM_VERSION = 4  # bump when the generator changes what a seed produces (2: the randomised world of 2026-11-29;
# 3: KITTI class sizes, porous vegetation: ragged hedges, bushes and crowns whose hits scatter in depth;
# 4: a 4 % share of two-seat city cars)


def _progress_path(split: Path, shard) -> Path:
    return split / (PROGRESS if shard[1] == 1 else f"synth_progress.{shard[0]}of{shard[1]}.json")


def synth_status(split) -> list[dict]:
    """The progress records of the synth runs that wrote this split (empty for real data)."""
    import json

    out = []
    for f in sorted(Path(split).glob("synth_progress*.json")):
        try:
            out.append(json.loads(f.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            out.append({"complete": False, "settings": {}, "file": str(f)})
    return out


def interrupted_note(split) -> str | None:
    """One sentence when a synth run into this split was interrupted, naming the command that finishes it."""
    for rec in synth_status(split):
        if not rec.get("complete"):
            s = rec.get("settings", {})
            cmd = (f"mmapps driving synth {Path(split).parent} --frames {s.get('frames')} --seed {s.get('seed')} "
                   f"--seq-len {s.get('seq_len')}" + ("" if s.get("clutter", True) else " --no-clutter")
                   + (" --reduced" if s.get("reduced") else "") + (f" --shard {s['shard']}" if s.get("shard", "0/1") != "0/1" else ""))
            return (f"{split}: the synthetic dataset was interrupted ({len(list((Path(split) / 'velodyne').glob('*.bin')))} "
                    f"of {s.get('frames')} frames complete); run the same command again to finish it: {cmd}")
    return None


def synth_dataset(out, frames: int, seed: int = 0, seq_len: int = 1, workers: int = 1, shard=(0, 1),
                  reduced: bool = False, clutter: bool = True) -> dict:
    """Generate ``frames`` frames in sequences of ``seq_len`` under out/training/.

    A progress record (``synth_progress.json``) is written first and marked complete at the end. Re-running the
    same command after an interruption resumes: finished frames are kept (each frame has its own seed, so the
    result is byte-identical to an uninterrupted run). Other settings over an interrupted run are refused."""
    import json

    from mmapps.errors import UserError
    from mmapps.io import atomic_write_text
    from mmapps.parallel import parallel_map, shard_items

    if frames < 1:
        raise UserError(f"--frames must be >= 1; got {frames}")
    if seq_len < 1:
        raise UserError(f"--seq-len must be >= 1; got {seq_len}")
    split = Path(out) / "training"
    settings = {"frames": frames, "seed": seed, "seq_len": seq_len, "clutter": clutter, "reduced": reduced,
                "shard": f"{shard[0]}/{shard[1]}", "sim_version": SIM_VERSION}
    progress = _progress_path(split, shard)
    if progress.is_file():
        try:
            before = json.loads(progress.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            before = {}
        if before.get("settings") != settings:
            raise UserError(f"{progress}: {split} was written by a synth run with other settings "
                            f"({before.get('settings')}); use another OUT folder or remove this one")
    for d in ("velodyne", "image_2", "label_2", "calib", "oxts"):
        (split / d).mkdir(parents=True, exist_ok=True)
    atomic_write_text(progress, json.dumps({"settings": settings, "complete": False}))
    jobs = [(str(split), seed, s, f, min(seq_len, frames - f), seq_len, reduced, clutter)
            for s, f in enumerate(range(0, frames, seq_len))]
    mine = shard_items(jobs, *shard)
    ids = [i for part in parallel_map(synth_sequence, mine, workers, "synthesising") for i in part]
    atomic_write_text(progress, json.dumps({"settings": settings, "complete": True, "written": len(ids)}))
    return {"out": str(split), "frames": len(ids), "seed": seed, "seq_len": seq_len, "clutter": clutter,
            "shard": f"{shard[0]}/{shard[1]}"}
