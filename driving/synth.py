"""Synthetic KITTI-format road scenes, ray-cast with open3d's RaycastingScene.

One procedural scene per sequence (road, kerbs, pavements, buildings, trees, poles, parked and moving
cars, pedestrians, cyclists). Per frame the ego vehicle moves along the road; an HDL-64E-like lidar and a
pinhole camera at KITTI's intrinsics are ray-cast from the same scene. Labels (with truncation and
occlusion measured on the render), calib and an oxts packet with GPS noise are written in KITTI format,
so the same loaders serve synthetic and real data. Same seed -> same bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import Calib, Object3D, lidar_box_to_label, project_box2d, wrap_angle

LIDAR_HEIGHT = 1.73
IMAGE_W, IMAGE_H = 1242, 375
# KITTI intrinsics (P2 of the object benchmark) without the stereo baseline column: the camera is the origin.
K = np.array([[721.5377, 0.0, 609.5593], [0.0, 721.5377, 172.854], [0.0, 0.0, 1.0]])
# Camera 0.27 m ahead of and 0.08 m below the lidar, as on the KITTI car (x_cam=-y, y_cam=-z, z_cam=x).
R_VELO_CAM = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
CAM_IN_VELO = np.array([0.27, 0.0, -0.08])
IMU_IN_VELO = np.array([-0.81, 0.32, -0.80])  # lidar <- imu offset, close to KITTI's Tr_imu_to_velo
LAT0, LON0 = 49.011, 8.423  # Karlsruhe, where KITTI drove
DT = 0.1  # 10 Hz

SIZES = {  # (mean l, w, h), std
    "Car": ((4.1, 1.72, 1.52), (0.35, 0.09, 0.09)),
    "Pedestrian": ((0.75, 0.62, 1.74), (0.12, 0.07, 0.1)),
    "Cyclist": ((1.75, 0.6, 1.72), (0.12, 0.05, 0.08)),
    "Van": ((5.0, 1.95, 2.1), (0.4, 0.08, 0.15)),  # labelled, but a neighbour class: teaches "not every box is a Car"
    "Truck": ((9.0, 2.5, 3.2), (1.5, 0.1, 0.3)),  # labelled Truck (another KITTI class): big boxes are not Cars
}
COLOURS = {"Car": [(0.7, 0.1, 0.1), (0.1, 0.2, 0.6), (0.8, 0.8, 0.8), (0.15, 0.15, 0.15), (0.4, 0.4, 0.45),
                   (0.9, 0.9, 0.95), (0.2, 0.4, 0.2)],
           "Pedestrian": [(0.2, 0.2, 0.5), (0.5, 0.3, 0.2), (0.1, 0.1, 0.1), (0.6, 0.1, 0.2)],
           "Cyclist": [(0.9, 0.5, 0.1), (0.1, 0.5, 0.3), (0.3, 0.3, 0.3)],
           "Van": [(0.9, 0.9, 0.9), (0.3, 0.35, 0.5), (0.8, 0.7, 0.2)],
           "Truck": [(0.85, 0.85, 0.85), (0.6, 0.2, 0.1), (0.2, 0.3, 0.5)]}
# Median reflectance per material, close to real HDL-64E sweeps (KITTI car paint: median ~0.06, half below 0.05);
# each object draws its own factor around it (log-normal), and a few hits are retro-reflective (plates, signs).
REFLECTANCE = {"ground": 0.12, "road": 0.22, "marking": 0.6, "kerb": 0.25, "building": 0.3, "tree": 0.25,
               "pole": 0.35, "Car": 0.08, "Pedestrian": 0.15, "Cyclist": 0.15, "Van": 0.07, "Truck": 0.1,
               "clutter": 0.2}
# HDL-64E elevation table: the upper block's 32 lasers at ~1/3 degree spacing, the lower block's at ~1/2 degree.
HDL64_ELEVATION_DEG = np.r_[np.linspace(2.0, -8.33, 32), np.linspace(-8.87, -24.87, 32)]


def synth_calib() -> Calib:
    V2C = np.hstack([R_VELO_CAM, (-R_VELO_CAM @ CAM_IN_VELO)[:, None]])
    I2V = np.hstack([np.eye(3), IMU_IN_VELO[:, None]])
    return Calib(np.hstack([K, np.zeros((3, 1))]), np.eye(3), V2C, I2V)


@dataclass
class Thing:
    """A scene part: meshes in the world frame, what it is, and (for agents) its box and velocity."""
    kind: str
    colour: tuple
    box: np.ndarray | None = None  # world [x, y, z_centre, l, w, h, yaw]
    vel: np.ndarray | None = None  # world [vx, vy]


# ----------------------------------------------------------------------------------------------- meshes
def _transform(mesh, R=None, t=(0, 0, 0)):
    import open3d as o3d

    v = mesh.vertex.positions.numpy().astype(np.float64)
    if R is not None:
        v = v @ np.asarray(R).T
    v = v + np.asarray(t)
    out = o3d.t.geometry.TriangleMesh()
    out.vertex.positions = o3d.core.Tensor(v.astype(np.float32))
    out.triangle.indices = mesh.triangle.indices
    return out


def _rz(yaw):
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _ry(pitch):
    c, s = math.cos(pitch), math.sin(pitch)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rx(roll):
    c, s = math.cos(roll), math.sin(roll)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def box_mesh(l, w, h, centre, yaw=0.0):
    import open3d as o3d

    m = o3d.t.geometry.TriangleMesh.create_box(l, w, h)
    m = _transform(m, None, (-l / 2, -w / 2, -h / 2))
    return _transform(m, _rz(yaw), centre)


def cylinder_mesh(r, h, centre, res=10):
    import open3d as o3d

    return _transform(o3d.t.geometry.TriangleMesh.create_cylinder(r, h, res, 1), None, centre)


def sphere_mesh(r, centre, res=8):
    import open3d as o3d

    return _transform(o3d.t.geometry.TriangleMesh.create_sphere(r, res), None, centre)


def agent_meshes(kind, box, rng):
    """Meshes of a car / pedestrian / cyclist filling its box [x, y, zc, l, w, h, yaw] (world)."""
    x, y, zc, l, w, h, yaw = box
    z0 = zc - h / 2
    R = _rz(yaw)

    def at(dx, dy, dz):
        return np.array([x, y, z0]) + R @ np.array([dx, dy, dz])

    if kind == "Car":
        hb = h * rng.uniform(0.45, 0.62)  # body with ground clearance, cabin on top
        body = box_mesh(l, w, hb - 0.18, at(0, 0, 0.18 + (hb - 0.18) / 2), yaw)
        lc = l * rng.uniform(0.42, 0.8)  # saloon .. hatchback / SUV cabins
        shift = -l * rng.uniform(0.0, 0.5) * (1 - lc / l)
        cabin = box_mesh(lc, w * rng.uniform(0.82, 0.95), h - hb, at(shift, 0, hb + (h - hb) / 2), yaw)
        wheels = [cylinder_mesh(0.3, 0.18 * 2, at(sx * l * 0.32, sy * (w / 2 - 0.12), 0.18), 6)
                  for sx in (-1, 1) for sy in (-1, 1)]
        return [body, cabin] + wheels
    if kind == "Pedestrian":
        legs = box_mesh(l * 0.5, w * 0.6, h * 0.47, at(0, 0, h * 0.235), yaw)
        torso = box_mesh(l * 0.55, w, h * 0.36, at(0, 0, h * 0.47 + h * 0.18), yaw)
        head = sphere_mesh(h * 0.085, at(0, 0, h - h * 0.085))
        return [legs, torso, head]
    if kind in ("Van", "Truck"):
        body = box_mesh(l, w, h - 0.2, at(0, 0, 0.2 + (h - 0.2) / 2), yaw)
        wheels = [cylinder_mesh(0.32, 0.2 * 2, at(sx * l * 0.33, sy * (w / 2 - 0.12), 0.2), 6)
                  for sx in (-1, 1) for sy in (-1, 1)]
        return [body] + wheels
    # Cyclist: bike frame + wheels + rider
    bike = box_mesh(l, 0.08, 0.5, at(0, 0, 0.55), yaw)
    wheel_f = box_mesh(0.65, 0.06, 0.65, at(l / 2 - 0.33, 0, 0.33), yaw)
    wheel_r = box_mesh(0.65, 0.06, 0.65, at(-l / 2 + 0.33, 0, 0.33), yaw)
    rider = box_mesh(0.45, w * 0.9, h - 0.95, at(-0.1, 0, 0.95 + (h - 0.95) / 2), yaw)
    head = sphere_mesh(0.13, at(0.05, 0, h - 0.13))
    return [bike, wheel_f, wheel_r, rider, head]


# ----------------------------------------------------------------------------------------------- scene
def make_scene(rng, seq_len: int, clutter: bool = True):
    """A straight road along world x, the ego near x=0 heading up to +-25 degrees off the road axis, on a sensor
    pitched / rolled by a few degrees at a varied height; one side of the road may be an open car park. Returns
    (static things, agents, scene info)."""
    road_half = rng.uniform(3.5, 7.5)
    pave = rng.uniform(2.0, 4.0)
    ego_y = rng.uniform(-road_half + 1.8, road_half - 1.8) * 0.5
    ego_speed = rng.uniform(0.0, 12.0)
    pose = dict(yaw=float(rng.uniform(-0.45, 0.45)), pitch=float(rng.normal(0, 0.02)),
                roll=float(rng.normal(0, 0.015)), height=float(LIDAR_HEIGHT + rng.normal(0, 0.08)))
    open_side = {s: bool(rng.random() < 0.35) for s in (-1, 1)}  # car park / open ground instead of buildings
    span = (-40.0, 110.0 + ego_speed * seq_len * DT)
    static: list[tuple[Thing, list]] = []
    agents: list[tuple[Thing, str]] = []
    # kerbs and buildings on both sides
    L = span[1] - span[0]
    xc = (span[0] + span[1]) / 2
    for side in (-1, 1):
        ky = side * (road_half + pave / 2)
        static.append((Thing("kerb", (0.55, 0.55, 0.52)), [box_mesh(L, pave, 0.15, (xc, ky, 0.075))]))
        x = span[0]
        while x < span[1]:
            bl = rng.uniform(8, 30)
            if rng.random() < 0.8 and not open_side[side]:
                by = side * (road_half + pave + rng.uniform(1.0, 8.0) + 5)
                bh = rng.uniform(4, 15)
                c = tuple(rng.uniform(0.35, 0.8, 3))
                static.append((Thing("building", c), [box_mesh(bl, 10, bh, (x + bl / 2, by, bh / 2))]))
            x += bl + rng.uniform(0, 6)
        for _ in range(rng.integers(3, 12)):
            tx = rng.uniform(*span)
            ty = side * (road_half + rng.uniform(0.6, pave + 2))
            if rng.random() < 0.5:
                th = rng.uniform(3, 6)
                static.append((Thing("tree", (0.3, 0.5, 0.2)), [cylinder_mesh(0.15, 2 * 2.5, (tx, ty, 0)),
                                                                 sphere_mesh(rng.uniform(1.0, 2.0), (tx, ty, th))]))
            else:
                static.append((Thing("pole", (0.5, 0.5, 0.5)), [cylinder_mesh(0.08, 2 * 4.5, (tx, ty, 0), 6)]))

    def free(box, taken):
        for b in taken:
            if abs(box[0] - b[0]) < (box[3] + b[3]) / 2 + 0.5 and abs(box[1] - b[1]) < (box[4] + b[4]) / 2 + 0.5:
                return False
        return True

    taken = [np.array([0, ego_y, 0, 6.0, 2.5, 0, 0])]  # keep the ego's own spot clear

    def add(kind, x, y, yaw, vel):
        (ml, mw, mh), (sl, sw, sh) = SIZES[kind]
        l, w, h = (max(m + s * rng.standard_normal(), 0.3 * m) for m, s in ((ml, sl), (mw, sw), (mh, sh)))
        z0 = 0.15 if road_half < abs(y) < road_half + pave else 0.0  # on the pavement
        box = np.array([x, y, z0 + h / 2, l, w, h, wrap_angle(yaw)])
        # sweep the whole sequence so moving agents never interpenetrate
        sweep = box.copy()
        sweep[3] = l + abs(vel[0]) * seq_len * DT
        sweep[0] = x + vel[0] * seq_len * DT / 2
        if not free(sweep, taken):
            return
        taken.append(sweep)
        colours = COLOURS[kind]
        agents.append((Thing(kind, colours[rng.integers(len(colours))], box, np.asarray(vel, float)), kind))

    for _ in range(rng.integers(4, 22)):  # parked cars along both kerbs, some angled, some at any yaw
        side = rng.choice([-1, 1])
        yaw = (0 if rng.random() < 0.5 else math.pi) + rng.normal(0, 0.08) + (rng.random() < 0.1) * math.pi / 2
        if rng.random() < 0.3:
            yaw = rng.uniform(-math.pi, math.pi)
        add("Car", rng.uniform(3, 75), side * (road_half - 1.1), yaw, (0, 0))
    for side in (-1, 1):  # car parks: cars anywhere out to 40 m sideways, most at any yaw
        if not open_side[side]:
            continue
        for _ in range(rng.integers(3, 16)):
            yaw = rng.uniform(-math.pi, math.pi) if rng.random() < 0.7 else math.pi / 2 + rng.normal(0, 0.1)
            add("Car", rng.uniform(3, 70), side * rng.uniform(road_half + pave + 1.5, 40), yaw, (0, 0))
        for _ in range(rng.integers(0, 4)):
            add("Pedestrian", rng.uniform(3, 50), side * rng.uniform(road_half + pave + 1, 35),
                rng.uniform(-math.pi, math.pi), (0, 0))
    for _ in range(rng.integers(1, 8)):  # moving cars in lanes
        lane = rng.choice([-1, 1])
        speed = rng.uniform(2, 14)
        add("Car", rng.uniform(5, 70), lane * road_half / 2 + rng.normal(0, 0.3),
            0 if lane < 0 else math.pi, (speed if lane < 0 else -speed, 0))
    for _ in range(rng.integers(0, 8)):  # pedestrians on the pavements or crossing
        side = rng.choice([-1, 1])
        crossing = rng.random() < 0.2
        yaw = rng.uniform(-math.pi, math.pi)
        sp = rng.uniform(0, 1.5)
        y = rng.uniform(-road_half, road_half) if crossing else side * (road_half + rng.uniform(0.4, pave - 0.3))
        add("Pedestrian", rng.uniform(4, 50), y, yaw, (sp * math.cos(yaw), 0.0))
    for _ in range(rng.integers(0, 5)):  # cyclists at the road edge
        side = rng.choice([-1, 1])
        speed = rng.uniform(1, 6)
        add("Cyclist", rng.uniform(4, 55), side * (road_half - 0.7), 0 if side < 0 else math.pi,
            (speed if side < 0 else -speed, 0))
    if clutter:  # drawn after the agents, so the agents do not depend on it
        for _ in range(rng.integers(0, 3)):  # parked vans
            side = rng.choice([-1, 1])
            add("Van", rng.uniform(5, 70), side * (road_half - 1.2), (0 if rng.random() < 0.5 else math.pi), (0, 0))
        for _ in range(rng.integers(0, 2)):  # parked trucks / trailers
            side = rng.choice([-1, 1])
            add("Truck", rng.uniform(8, 70), side * (road_half - 1.4), (0 if rng.random() < 0.5 else math.pi), (0, 0))
        static += _clutter(rng, road_half, pave, span, open_side)
    return static, agents, dict(road_half=road_half, ego_y=ego_y, ego_speed=ego_speed, span=span, **pose)


def _clutter(rng, road_half, pave, span, open_side=None):
    """Street furniture that real sweeps are full of (walls, guard rails, fences, hedges, bushes, bins, bollards,
    bike racks, signs, poles): negatives, so the detector does not call every upright cluster a pedestrian."""
    out = []
    for side in (-1, 1):
        edge = side * (road_half + pave)
        if rng.random() < 0.35:  # guard rail along the road edge: a band 0.3 m high at 0.5-0.8 m
            L = rng.uniform(20, 120)
            out.append((Thing("clutter", (0.7, 0.7, 0.72)),
                        [box_mesh(L, 0.05, 0.3, (rng.uniform(*span), side * (road_half + 0.3), 0.65))]
                        + [cylinder_mesh(0.05, 2 * 0.75, (x, side * (road_half + 0.35), 0), 4)
                           for x in np.arange(0, 70, 4.0)]))
        for _ in range(rng.integers(0, 3)):  # walls 1-3 m high behind the pavement or across open ground
            L, H = rng.uniform(5, 40), rng.uniform(1.0, 3.0)
            far = (open_side or {}).get(side, False)
            y = side * (road_half + pave + (rng.uniform(2, 35) if far else 0.2))
            out.append((Thing("clutter", tuple(rng.uniform(0.3, 0.7, 3))),
                        [box_mesh(L, 0.3, H, (rng.uniform(0, 70), y, H / 2), rng.uniform(-0.3, 0.3) if far else 0.0)]))
        for _ in range(rng.integers(0, 2)):  # bike racks: rows of hoops about pedestrian height
            x0, y0 = rng.uniform(4, 50), side * (road_half + rng.uniform(0.3, pave))
            out.append((Thing("clutter", (0.5, 0.5, 0.55)),
                        [box_mesh(0.05, 0.7, 0.9, (x0 + 0.7 * i, y0, 0.15 + 0.45)) for i in range(rng.integers(3, 8))]))
        for _ in range(rng.integers(0, 4)):  # fences / hedges along the back of the pavement
            L, H = rng.uniform(4, 25), rng.uniform(0.8, 2.0)
            out.append((Thing("clutter", tuple(rng.uniform(0.2, 0.6, 3))),
                        [box_mesh(L, rng.uniform(0.05, 0.8), H, (rng.uniform(*span), edge + side * 0.3, 0.15 + H / 2))]))
        for _ in range(rng.integers(2, 14)):
            x = rng.uniform(2, 75)
            y = side * (road_half + rng.uniform(0.2, pave))
            kind = rng.integers(4)
            if kind == 0:  # bush
                r = rng.uniform(0.3, 1.0)
                m = [sphere_mesh(r, (x, y, 0.15 + r * 0.7))]
            elif kind == 1:  # bin / box
                a, b, c = rng.uniform(0.4, 1.0), rng.uniform(0.4, 1.0), rng.uniform(0.8, 1.4)
                m = [box_mesh(a, b, c, (x, y, 0.15 + c / 2), rng.uniform(0, math.pi))]
            elif kind == 2:  # bollard
                hb = rng.uniform(0.6, 1.2)
                m = [cylinder_mesh(rng.uniform(0.06, 0.15), 2 * hb, (x, y, 0.15), 6)]
            else:  # sign on a post
                m = [cylinder_mesh(0.05, 2 * 2.2, (x, y, 0), 6), box_mesh(0.05, 0.7, 0.7, (x, y, 2.3))]
            out.append((Thing("clutter", tuple(rng.uniform(0.2, 0.9, 3))), m))
    return out


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
    p_drop = 0.05 + 0.35 * (1 - cos_all) ** 3 + 0.25 * dark_far
    keep = np.isfinite(t) & (t < 120) & (t > 2.0) & (rng.random(len(t)) > p_drop)
    t = t[keep] + rng.normal(0, 0.02, keep.sum())
    pts = dirs[keep] * t[:, None]
    kd = kinds[gid[keep]]
    hitw = ego + (dirs[keep] * t[:, None]) @ Rw.T
    refl = np.array([REFLECTANCE.get(x, 0.2) for x in kd]) * rfactor[gid[keep]]
    refl = np.where((kd == "ground") & (np.abs(hitw[:, 1]) < rh), REFLECTANCE["road"], refl)
    refl = np.where((kd == "ground") & (np.abs(np.abs(hitw[:, 1]) - rh + 0.3) < 0.08), REFLECTANCE["marking"], refl)
    cosi = np.abs((nrm[keep] * (dirs[keep] @ Rw.T)).sum(1))
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
SIM_VERSION = 2  # bump when the generator changes what a seed produces (2: the randomised world of 2026-11-29)


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
