"""assistant: speech + text -> spoken-language understanding on the mmapps fusion core."""

__all__ = ["Pipeline"]


def __getattr__(name):
    # lazy: importing the package stays light (torch, pocketsphinx, transformers load on first use)
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'assistant' has no attribute {name!r}")
