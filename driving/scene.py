"""Procedural road scenes for the synthetic KITTI generator: what stands where (road, kerbs, buildings or car
parks, trees, poles, clutter, parked and moving cars, vans, trucks, pedestrians, cyclists) and their meshes.
``driving.synth`` puts the sensors in these scenes and writes KITTI files."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .io import wrap_angle

LIDAR_HEIGHT = 1.73
DT = 0.1  # 10 Hz

# Car / Pedestrian / Cyclist means: the KITTI training labels' class means (the anchor sizes OpenPCDet uses for
# KITTI); the Car spread covers the 3.0-3.5 m city cars real streets are full of (simulator 2 drew 4.1 +- 0.35 m).
SIZES = {  # (mean l, w, h), std
    "Car": ((3.9, 1.6, 1.56), (0.42, 0.1, 0.12)),
    "Pedestrian": ((0.8, 0.6, 1.73), (0.12, 0.07, 0.1)),
    "Cyclist": ((1.76, 0.6, 1.73), (0.12, 0.05, 0.08)),
    "Van": ((5.0, 1.95, 2.1), (0.4, 0.08, 0.15)),  # labelled, but a neighbour class: teaches "not every box is a Car"
    "Truck": ((9.0, 2.5, 3.2), (1.5, 0.1, 0.3)),  # labelled Truck (another KITTI class): big boxes are not Cars
}
# Two-seat city cars (2.4-3.0 m) lie 2-3.6 sigma below the Car Gaussian above yet are common in European cities: a
# small share of Cars is drawn from their own size range so the detector learns that such a short box is a Car too.
MICROCAR_SHARE = 0.04
MICROCAR_SIZE = ((2.4, 3.0), (1.5, 1.65), (1.45, 1.6))  # uniform ranges of l, w, h
COLOURS = {"Car": [(0.7, 0.1, 0.1), (0.1, 0.2, 0.6), (0.8, 0.8, 0.8), (0.15, 0.15, 0.15), (0.4, 0.4, 0.45),
                   (0.9, 0.9, 0.95), (0.2, 0.4, 0.2)],
           "Pedestrian": [(0.2, 0.2, 0.5), (0.5, 0.3, 0.2), (0.1, 0.1, 0.1), (0.6, 0.1, 0.2)],
           "Cyclist": [(0.9, 0.5, 0.1), (0.1, 0.5, 0.3), (0.3, 0.3, 0.3)],
           "Van": [(0.9, 0.9, 0.9), (0.3, 0.35, 0.5), (0.8, 0.7, 0.2)],
           "Truck": [(0.85, 0.85, 0.85), (0.6, 0.2, 0.1), (0.2, 0.3, 0.5)]}


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
                static.append((Thing("tree", (0.35, 0.25, 0.15)), [cylinder_mesh(0.15, 2 * 2.5, (tx, ty, 0))]))
                static.append((Thing("vegetation", (0.3, 0.5, 0.2)), [sphere_mesh(rng.uniform(1.0, 2.0), (tx, ty, th))]))
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
        if kind == "Car" and rng.random() < MICROCAR_SHARE:
            l, w, h = (rng.uniform(lo, hi) for lo, hi in MICROCAR_SIZE)
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


def hedge_meshes(rng, length, height, x0, y):
    """A hedge as real sweeps see it: 0.5-1 m sections of uneven height and depth (a ragged top and face), not
    one smooth box; the renderer scatters the hits inside (``synth.VEGETATION``)."""
    out, x = [], x0 - length / 2
    while x < x0 + length / 2:
        seg = rng.uniform(0.5, 1.0)
        h = max(0.4, height + rng.normal(0, 0.12))
        d = rng.uniform(0.5, 1.2)
        out.append(box_mesh(seg, d, h, (x + seg / 2, y + rng.normal(0, 0.08), 0.15 + h / 2), rng.normal(0, 0.05)))
        x += seg
    return out


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
            L, H, x0 = rng.uniform(4, 25), rng.uniform(0.8, 2.0), rng.uniform(*span)
            if rng.random() < 0.5:
                out.append((Thing("clutter", tuple(rng.uniform(0.2, 0.6, 3))),
                            [box_mesh(L, rng.uniform(0.05, 0.3), H, (x0, edge + side * 0.3, 0.15 + H / 2))]))
            else:
                out.append((Thing("vegetation", (0.2, rng.uniform(0.35, 0.55), 0.15)),
                            hedge_meshes(rng, L, H, x0, edge + side * 0.6)))
        for _ in range(rng.integers(2, 14)):
            x = rng.uniform(2, 75)
            y = side * (road_half + rng.uniform(0.2, pave))
            kind = rng.integers(4)
            if kind == 0:  # bush or shrubbery: 1-4 overlapping porous crowns, rays go into them (``synth.VEGETATION``)
                m = []
                for _ in range(rng.integers(1, 5)):
                    r = rng.uniform(0.3, 1.2)
                    m.append(sphere_mesh(r, (x + rng.normal(0, 0.8), y + rng.normal(0, 0.4), 0.15 + r * 0.7)))
                out.append((Thing("vegetation", (0.25, rng.uniform(0.35, 0.55), 0.2)), m))
                continue
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
