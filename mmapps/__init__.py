"""mmapps: multimodal AI applications on one shared fusion core.

The core (this package) owns encoders, fusion, training, checkpoints, metrics and explanations.
It never imports a scenario package (medical, driving, assistant); only ``mmapps.cli`` mounts them.
"""
__version__ = "0.1.0"
