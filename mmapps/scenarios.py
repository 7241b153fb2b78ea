"""The scenario registry (in the shape of timm's ``list_models``): each scenario registers its name, Pipeline,
Typer app, demo and bench by dotted reference, so the root CLI, ``mmapps info``, ``demo``, ``bench`` and the one
parametrized contract test iterate over it. References are strings, resolved on use: the core never imports a
scenario at import time and ``mmapps --help`` stays fast. A fourth scenario is one ``register`` call.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field

from .errors import UserError, suggest


@dataclass(frozen=True)
class Scenario:
    """One registered scenario.

    Attributes:
        name: CLI sub-command and checkpoint scenario key ("medical").
        summary: one line for ``--help`` and ``info``.
        package: the importable package holding ``cli``, ``pipeline`` and ``bench``.
        main_command: the sub-command that runs the Pipeline on one input ("predict").
        sample_args: arguments of ``main_command`` that run it on the bundled sample; ``{data}`` stands for the
            bundled data folder (used by ``demo`` checks and the contract test).
    """

    name: str
    summary: str
    package: str
    main_command: str
    sample_args: tuple[str, ...] = field(default_factory=tuple)

    def _attr(self, module: str, attr: str):
        return getattr(importlib.import_module(f"{self.package}.{module}"), attr)

    @property
    def available(self) -> bool:
        return importlib.util.find_spec(f"{self.package}.cli") is not None

    @property
    def pipeline(self):
        """The scenario's Pipeline class (a subclass of mmapps.pipeline.Pipeline)."""
        return self._attr("pipeline", "Pipeline")

    @property
    def app(self):
        """The Typer sub-app mounted as ``mmapps <name>``."""
        return self._attr("cli", "app")

    @property
    def demo(self):
        """``demo(out_dir) -> dict``: the bundled model on the bundled sample."""
        return self._attr("cli", "demo")

    @property
    def bench(self):
        """``run_bench(quick=False) -> mmapps.bench.BenchReport``."""
        return self._attr("bench", "run_bench")


_REGISTRY: dict[str, Scenario] = {}


def register(scenario: Scenario) -> Scenario:
    """Add a scenario; a second one with the same name is refused."""
    if scenario.name in _REGISTRY:
        raise ValueError(f"scenario {scenario.name!r} is already registered")
    _REGISTRY[scenario.name] = scenario
    return scenario


def list_scenarios(available_only: bool = True) -> list[str]:
    """Registered scenario names, in registration order."""
    return [n for n, s in _REGISTRY.items() if s.available or not available_only]


def get_scenario(name: str) -> Scenario:
    """The registered scenario, or a UserError listing the choices."""
    if name not in _REGISTRY:
        raise UserError(f"SCENARIO must be one of {', '.join(_REGISTRY)}; got {name!r}{suggest(name, _REGISTRY)}")
    return _REGISTRY[name]


# The built-in scenarios: explicit calls, not an accident of imports.
register(Scenario("medical", "CT/MRI + patient record -> lung-nodule malignancy risk", "medical", "predict",
                  ("{data}/medical/samples/patient/ct", "--record", "{data}/medical/samples/patient/record.json")))
register(Scenario("driving", "camera + lidar + GPS/IMU -> 3D detection, world coordinates, tracking", "driving",
                  "perceive", ("{data}/driving/samples/training",)))
register(Scenario("assistant", "speech + text -> intent, slots, out-of-scope, reply", "assistant", "understand",
                  ("--text", "play some jazz on spotify")))
