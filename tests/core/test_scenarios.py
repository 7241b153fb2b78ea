"""ONE contract test over every registered scenario (timm's tests/test_models.py shape): --help, a missing
input, a checkpoint of another scenario, a pickled checkpoint and one with NaN weights all end in exactly one
`error:` line and exit code 2; the registry refuses duplicates and names the choices."""
from __future__ import annotations

import pickle

import pytest
import torch
from typer.testing import CliRunner

from mmapps.cli import app
from mmapps.errors import UserError
from mmapps.paths import data_dir
from mmapps.scenarios import Scenario, get_scenario, list_scenarios, register

runner = CliRunner()
SCENARIOS = list_scenarios()


def _args(spec: Scenario) -> list[str]:
    return [a.replace("{data}", str(data_dir())) for a in spec.sample_args]


def _one_error_line(r) -> str:
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_all_three_scenarios_are_registered():
    assert SCENARIOS == ["medical", "driving", "assistant"]


def test_registry_refuses_duplicates_and_names_choices():
    with pytest.raises(ValueError, match="already registered"):
        register(Scenario("medical", "again", "medical", "predict"))
    with pytest.raises(UserError, match="did you mean 'driving'"):
        get_scenario("drivng")


@pytest.mark.parametrize("name", SCENARIOS)
def test_help(name):
    r = runner.invoke(app, [name, "--help"])
    assert r.exit_code == 0 and get_scenario(name).main_command in r.stdout


@pytest.mark.parametrize("name", SCENARIOS)
def test_pipeline_subclasses_the_core_contract(name):
    from mmapps.pipeline import Pipeline

    cls = get_scenario(name).pipeline
    assert issubclass(cls, Pipeline) and cls.scenario == name
    assert cls.from_checkpoint.__func__ is Pipeline.from_checkpoint.__func__  # written once, in the core


@pytest.mark.parametrize("name", SCENARIOS)
def test_missing_input_is_one_error_line(name, tmp_path):
    spec = get_scenario(name)
    missing = str(tmp_path / "no_such_input.wav")
    args = [spec.main_command, "--audio", missing] if name == "assistant" else [spec.main_command, missing]
    line = _one_error_line(runner.invoke(app, [name, *args]))
    assert "no_such_input" in line


@pytest.mark.parametrize("name", SCENARIOS)
def test_checkpoint_of_another_scenario_is_refused(name):
    spec = get_scenario(name)
    other = next(s for s in SCENARIOS if s != name)
    r = runner.invoke(app, [name, spec.main_command, *_args(spec), "--model", str(data_dir() / other / "model.pt")])
    assert f"not a {name} checkpoint" in _one_error_line(r)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("name", SCENARIOS)
def test_pickled_checkpoint_is_refused(name, tmp_path):
    spec = get_scenario(name)
    bad = tmp_path / "evil.pt"
    torch.save({"format": "mmapps-checkpoint/1", "config": {"scenario": name}, "x": _Evil()}, bad,
               pickle_protocol=pickle.DEFAULT_PROTOCOL)
    r = runner.invoke(app, [name, spec.main_command, *_args(spec), "--model", str(bad)])
    assert "pickled" in _one_error_line(r) and "this must never run" not in r.output


@pytest.mark.parametrize("name", SCENARIOS)
def test_nan_weights_are_refused(name, tmp_path):
    spec = get_scenario(name)
    bundle = torch.load(data_dir() / name / "model.pt", weights_only=True)
    key = next(k for k, v in bundle["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    bundle["state_dict"][key] = torch.full_like(bundle["state_dict"][key], float("nan"))
    bad = tmp_path / "nan.pt"
    torch.save(bundle, bad)
    r = runner.invoke(app, [name, spec.main_command, *_args(spec), "--model", str(bad)])
    assert "NaN" in _one_error_line(r)
