"""One contract test over every registered encoder and fusion module (timm style)."""
import pytest
import torch

from mmapps.encoders import ENCODERS, EXAMPLE_INPUTS, get_encoder
from mmapps.fusion import FUSIONS, get_fusion
from mmapps.model import FusionModel, HeadSpec


def test_every_encoder_has_an_example():
    assert set(EXAMPLE_INPUTS) == set(ENCODERS.names())


@pytest.mark.parametrize("name", ENCODERS.names())
@pytest.mark.parametrize("batch", [1, 3])
def test_encoder_contract(name, batch):
    torch.manual_seed(0)
    kwargs, make = EXAMPLE_INPUTS[name]
    enc = get_encoder(name, **kwargs)
    enc.train(batch > 1)  # BatchNorm cannot train on a batch of one
    x = make(batch)
    y = enc(x)
    assert y.shape == (batch, enc.out_dim)
    assert torch.isfinite(y).all()
    y.sum().backward()
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", FUSIONS.names())
@pytest.mark.parametrize("batch", [1, 4])
def test_fusion_contract(name, batch):
    torch.manual_seed(0)
    dims = {"x": 8, "y": 5, "z": 3}
    fusion = get_fusion(name, dims, out_dim=16)
    feats = {m: torch.randn(batch, d, requires_grad=True) for m, d in dims.items()}
    present = {m: torch.ones(batch, dtype=torch.bool) for m in dims}
    out = fusion(feats, present)
    assert out.shape == (batch, fusion.out_dim) == (batch, 16)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(feats[m].grad is not None for m in dims)
    weights = fusion.last_weights
    assert set(weights) == set(dims)
    assert all(w.shape == (batch,) for w in weights.values())


@pytest.mark.parametrize("name", FUSIONS.names())
def test_fusion_with_a_missing_modality(name):
    torch.manual_seed(0)
    dims = {"x": 8, "y": 5}
    fusion = get_fusion(name, dims, out_dim=16)
    fusion.eval()
    present = {"x": torch.tensor([True, True, False]), "y": torch.tensor([False, True, True])}
    feats = {m: torch.randn(3, d) for m, d in dims.items()}
    out = fusion(feats, present)
    assert torch.isfinite(out).all()
    # A missing modality gets no weight, and its (garbage) features do not change the output.
    assert fusion.last_weights["y"][0] == 0 and fusion.last_weights["x"][2] == 0
    feats2 = {"x": feats["x"], "y": feats["y"].clone()}
    feats2["y"][0] += 100.0
    assert torch.allclose(fusion(feats2, present)[0], out[0], atol=1e-5)
    # A modality absent from the dict entirely is treated as missing everywhere.
    out_only_x = fusion({"x": feats["x"]}, {"x": torch.ones(3, dtype=torch.bool)})
    assert out_only_x.shape == (3, 16) and torch.isfinite(out_only_x).all()


@pytest.mark.parametrize("name", FUSIONS.names())
def test_fusion_model_loss_backward_with_missing_modality(name):
    torch.manual_seed(0)
    kwargs, make = EXAMPLE_INPUTS["image2d"]
    encoders = {"img": get_encoder("image2d", **kwargs), "tab": get_encoder("tabular", in_features=6, out_dim=8)}
    model = FusionModel(encoders, {"y": HeadSpec("binary"), "k": HeadSpec("multiclass", 3, weight=0.5)},
                        fusion=name, fusion_dim=16, modality_dropout=0.5)
    batch = {"img": make(4), "tab": torch.randn(4, 6),
             "present": {"img": torch.tensor([1, 1, 0, 1]).bool(), "tab": torch.tensor([1, 0, 1, 1]).bool()},
             "targets": {"y": torch.tensor([0., 1., 1., 0.]), "k": torch.tensor([0, 2, 1, 1])}}
    out = model(batch)
    assert set(out["losses"]) == {"y", "k"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert out["outputs"]["y"].shape == (4, 1) and out["outputs"]["k"].shape == (4, 3)


def test_modality_dropout_never_drops_everything():
    from mmapps.model import modality_dropout

    torch.manual_seed(0)
    present = {"a": torch.tensor([1, 1, 0, 1] * 250).bool(), "b": torch.tensor([1, 0, 1, 1] * 250).bool()}
    dropped = modality_dropout(present, p=0.9)
    kept = torch.stack([dropped["a"], dropped["b"]]).any(0)
    assert kept.all()
    # Nothing that was missing comes back, and something was actually dropped.
    assert not (dropped["a"] & ~present["a"]).any()
    assert (dropped["a"] != present["a"]).any()
