"""medical: CT/MRI + patient record -> lung-nodule malignancy risk (on the mmapps fusion core).

Importing the package stays light; ``from medical import Pipeline`` loads torch/MONAI on first use.
"""

__all__ = ["Pipeline"]


def __getattr__(name):
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'medical' has no attribute {name!r}")
