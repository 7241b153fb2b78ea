"""driving: camera + lidar + GPS -> 3D perception (KITTI formats).

``from driving import Pipeline`` is lazy so that importing the package stays light.
"""
__all__ = ["Pipeline"]


def __getattr__(name):
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'driving' has no attribute {name!r}")
