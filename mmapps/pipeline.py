"""The one Pipeline contract every scenario follows (the shape of transformers' pipelines and torchvision's
``Weights``): ``preprocess -> _forward -> postprocess``, rebuilt from one checkpoint file.

A scenario subclasses :class:`Pipeline`, sets ``scenario`` (the checkpoint's scenario key), ``config_class``
(the dataclass its model is built from) and ``build_model``, and implements the three steps. ``from_checkpoint``
is written once, here: it finds the bundled default, checks the scenario key, validates the stored config with the
same dataclass validation as ``--config``, refuses non-finite weights, and loads with ``weights_only=True``.
Preprocessing parameters live in the checkpoint's ``meta`` (``pipe.meta``), like torchvision's ``Weights.meta``.

Timing belongs to ``mmapps bench``: the production call computes each result once.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from .checkpoint import CheckpointError, load_checkpoint, load_state

SCENARIO_KEY = "scenario"


class Pipeline:
    """Base class: a trained model plus its pre- and postprocessing.

    Subclasses set:
        scenario: the value of ``config["scenario"]`` in their checkpoints ("medical", ...).
        config_class: dataclass of the model config stored under ``config["model"]`` (or None when the
            scenario stores a plain dict and validates it in ``build_model``).
    and implement ``build_model(config)``, ``preprocess``, ``_forward`` and ``postprocess``.
    """

    scenario: ClassVar[str] = ""
    config_class: ClassVar[type | None] = None

    def __init__(self, model, config, meta: dict | None = None, device: str = "auto", path: str | None = None):
        """Args:
            model: the ``torch.nn.Module`` (moved to ``device`` and put in eval mode), or None for model-free
                methods (e.g. a classical baseline).
            config: the model config (a ``config_class`` instance or a dict).
            meta: preprocessing parameters, label maps, calibration: whatever the checkpoint's ``meta`` holds.
            device: "auto", "cpu" or "cuda".
            path: the checkpoint file this came from (reported by ``info`` and bench), or None.
        """
        from .device import resolve_device

        self.device = resolve_device(device)
        if self.device.type == "cuda":
            import torch

            # full float32 on the GPU: with TF32 convolutions (PyTorch's cuDNN default) the driving boxes and scores
            # differed from the CPU's by up to 0.056; these models are small, so exact answers cost little time
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.model = model.to(self.device).eval() if model is not None else None
        self.config = config
        self.meta = dict(meta or {})
        self.path = path

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def build_model(cls, config):  # pragma: no cover - every scenario overrides it
        """Rebuild the (untrained) model from its config alone."""
        raise NotImplementedError

    @classmethod
    def config_from_checkpoint(cls, stored: Any, path: Path):
        """The model config stored in the checkpoint, validated; a bad one is a CheckpointError."""
        if cls.config_class is None:
            return stored
        from .config import config_from_dict, validate
        from .errors import UserError

        if not isinstance(stored, dict):
            raise CheckpointError(f"{path}: the stored model config is {type(stored).__name__}, not a mapping")
        try:
            cfg = config_from_dict(cls.config_class, stored)
            validate(cfg)
        except (UserError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: invalid model config in the checkpoint ({e})") from e
        return cfg

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None = None, device: str = "auto", **kwargs) -> "Pipeline":
        """Rebuild the pipeline from one checkpoint file (default: the scenario's bundled model).

        Args:
            path: checkpoint file, or None for ``data/<scenario>/model.pt``.
            device: "auto" (CUDA when available), "cpu" or "cuda".
            **kwargs: passed to the subclass constructor.
        Returns:
            The pipeline, model in eval mode on ``device``.
        Raises:
            CheckpointError: missing, truncated, pickled, foreign-scenario, invalid-config or non-finite file.
        """
        from .paths import bundled_model

        path = Path(path) if path else bundled_model(cls.scenario)
        bundle = load_checkpoint(path)
        conf = bundle["config"]
        found = conf.get(SCENARIO_KEY) if isinstance(conf, dict) else None
        if found != cls.scenario:
            raise CheckpointError(f"{path}: not a {cls.scenario} checkpoint (it is for "
                                  f"{found if found else 'an unknown scenario'})")
        if "model" not in conf:
            raise CheckpointError(f"{path}: checkpoint config lacks the 'model' section")
        config = cls.config_from_checkpoint(conf["model"], path)
        check_finite_state(bundle["state_dict"], path)
        check_shapes_before_building(cls.build_model, config, bundle["state_dict"], path)
        try:
            model = cls.build_model(config)
        except CheckpointError:
            raise
        except (ValueError, TypeError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{path}: the stored config does not describe a buildable model ({e})") from e
        model = load_state(model, bundle, path)
        return cls(model, config, bundle.get("meta"), device=device, path=str(path), **kwargs)

    # -- the three steps ---------------------------------------------------------------------------
    def preprocess(self, *args, **kwargs) -> dict:  # pragma: no cover - overridden
        """Read and validate raw inputs -> model inputs (a dict keyed by modality)."""
        raise NotImplementedError

    def _forward(self, inputs: dict) -> dict:  # pragma: no cover - overridden
        """Model inputs -> raw model outputs (tensors), under ``torch.no_grad``."""
        raise NotImplementedError

    def postprocess(self, outputs: dict, inputs: dict) -> dict:  # pragma: no cover - overridden
        """Raw outputs -> a JSON-ready result dict."""
        raise NotImplementedError

    def __call__(self, *args, **kwargs) -> dict:
        """``postprocess(_forward(preprocess(...)))``."""
        import torch

        inputs = self.preprocess(*args, **kwargs)
        with torch.no_grad():
            outputs = self._forward(inputs)
        return self.postprocess(outputs, inputs)


def _shapes_only_mode(device: str):
    """``torch.device(device)`` that also skips weight initialisation: on the meta device ``normal_`` /
    ``uniform_`` run Python reference code that imports torch._dynamo (~1.4 s of every CLI call) to fill
    tensors that hold no data anyway."""
    import torch

    try:
        from torch.utils._device import DeviceContext  # private: a torch without it gets the plain device mode
    except ImportError:
        return torch.device(device)
    fills = {torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.random_, torch.Tensor.bernoulli_,
             torch.Tensor.exponential_, torch.Tensor.log_normal_, torch.Tensor.cauchy_, torch.Tensor.geometric_}

    class ShapesOnly(DeviceContext):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in fills or getattr(func, "__module__", None) == "torch.nn.init":
                return args[0] if args else (kwargs or {}).get("tensor")
            return super().__torch_function__(func, types, args, kwargs or {})

    return ShapesOnly(device)


def check_shapes_before_building(build, config, state: dict, path: str | os.PathLike) -> None:
    """Build the model on torch's "meta" device (shapes only, no memory) and compare it with the stored weights.

    A tampered config (a vocabulary of 10^9 words, a width of 10^6) would otherwise allocate gigabytes or
    terabytes before ``load_state_dict`` notices the mismatch. A model that cannot be built on the meta device
    (it loads files or computes on its weights) skips this check; the real build and load still validate it.
    """
    import torch

    try:
        with _shapes_only_mode("meta"):
            shapes = {k: tuple(v.shape) for k, v in build(config).state_dict().items()}
    except Exception:  # not meta-buildable: fall back to the checks of the real build
        return
    stored = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    wrong = [f"{k} {stored[k]} vs {shapes[k]}" for k in shapes if k in stored and stored[k] != shapes[k]]
    missing = [k for k in shapes if k not in stored]
    if wrong or missing:
        detail = (f"{len(wrong)} with another shape, e.g. {wrong[0]}" if wrong
                  else f"{len(missing)} missing, e.g. {missing[0]}")
        raise CheckpointError(f"{path}: the stored config does not match the stored weights ({detail}); "
                              f"a damaged or tampered checkpoint")


def check_finite_state(state: dict, path: str | os.PathLike) -> None:
    """A checkpoint whose weights hold NaN or inf would give plausible-looking nonsense: refuse it."""
    import torch

    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: weight {name!r} holds NaN or infinite values (a damaged checkpoint)")


def check_finite_output(value, what: str = "model output") -> None:
    """A model that outputs NaN is an error, never a result."""
    import torch

    if isinstance(value, dict):
        for k, v in value.items():
            check_finite_output(v, f"{what}[{k}]")
        return
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() and not torch.isfinite(value).all():
        from .errors import ModelError

        raise ModelError(f"{what} is NaN or infinite: the checkpoint or the input is damaged")
