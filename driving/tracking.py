"""Tracking across a sequence: a constant-velocity Kalman filter per object in a fixed world plane, with the
ego motion removed through the oxts GPS/IMU pose."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .io import Calib, Frame, oxts_pose


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

