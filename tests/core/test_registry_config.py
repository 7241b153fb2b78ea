from dataclasses import dataclass, field

import pytest

from mmapps.config import load_config
from mmapps.errors import UserError
from mmapps.fusion import get_fusion
from mmapps.registry import Registry
from mmapps.trainer import TrainConfig


def test_registry_refuses_duplicates_and_suggests():
    reg = Registry("widget")
    reg.register("concat")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("concat")(lambda: 2)
    with pytest.raises(ValueError, match=r"did you mean 'concat'.*valid names: concat"):
        reg.get("concatt")


def test_get_fusion_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="attention, concat, gated"):
        get_fusion("sum", {"a": 2})


@dataclass
class Model:
    fusion: str = "attention"
    dims: tuple[int, ...] = (16, 32)

    def validate(self):
        from mmapps.config import check_choice

        check_choice("fusion", self.fusion, ["concat", "weighted", "gated", "attention"])


@dataclass
class Cfg:
    model: Model = field(default_factory=Model)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = "x"


def test_load_toml_yaml_and_overrides(tmp_path):
    (tmp_path / "c.toml").write_text('name = "toml"\n[train]\nlr = 0.01\nepochs = 3\n')
    cfg = load_config(Cfg, tmp_path / "c.toml", ["model.fusion=gated", "train.epochs=7", "model.dims=8,4"])
    assert (cfg.name, cfg.train.lr, cfg.train.epochs, cfg.model.fusion, cfg.model.dims) == ("toml", 0.01, 7, "gated", (8, 4))
    (tmp_path / "c.yaml").write_text("train:\n  optimizer: sgd\n  amp: false\n")
    cfg = load_config(Cfg, tmp_path / "c.yaml")
    assert cfg.train.optimizer == "sgd" and cfg.train.amp is False


def test_validation_messages_name_parameter_choices_and_value():
    with pytest.raises(UserError, match=r"fusion must be one of concat, weighted, gated, attention; got 'concatt' \(did you mean 'concat'\?\)"):
        load_config(Cfg, overrides=["model.fusion=concatt"])
    with pytest.raises(UserError, match="epochs must be an integer; got 'many'"):
        load_config(Cfg, overrides=["train.epochs=many"])
    with pytest.raises(UserError, match=r"unknown config key 'train.lrr' \(did you mean 'lr'\?\)"):
        load_config(Cfg, overrides=["train.lrr=1"])
    with pytest.raises(UserError, match="optimizer must be one of adamw, adam, sgd"):
        load_config(Cfg, overrides=["train.optimizer=lamb"])


def test_bad_config_file(tmp_path):
    (tmp_path / "c.toml").write_text("this is = = not toml")
    with pytest.raises(UserError, match="cannot parse config"):
        load_config(Cfg, tmp_path / "c.toml")
    with pytest.raises(UserError, match="config file not found"):
        load_config(Cfg, tmp_path / "missing.toml")
