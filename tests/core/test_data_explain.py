import torch

from mmapps.data import collate_samples
from mmapps.explain import masked_contributions
from mmapps.trainer import TrainConfig, Trainer
from tests.core.toy import ToyDataset, toy_model


def test_collate_builds_present_masks_and_zero_fills():
    samples = [{"a": torch.ones(3), "targets": {"y": 1.0}, "meta": {"id": 0}},
               {"b": torch.full((2,), 2.0), "meta": {"id": 1}},
               {"a": torch.ones(3), "b": torch.ones(2), "targets": {"y": 0.0}}]
    batch = collate_samples(samples)
    assert batch["present"]["a"].tolist() == [True, False, True]
    assert batch["present"]["b"].tolist() == [False, True, True]
    assert batch["a"][1].abs().sum() == 0 and batch["b"][0].abs().sum() == 0
    assert torch.isnan(batch["targets"]["y"][1]) and batch["targets"]["y"][0] == 1.0
    assert [m.get("id") for m in batch["meta"]] == [0, 1, None]


def test_masked_contributions_follow_the_informative_modality(tmp_path):
    # "a" decides the label alone here (b is noise), so masking "a" must move the prediction far more.
    class OnlyA(ToyDataset):
        def __init__(self, n, seed):
            super().__init__(n, seed)
            self.y = (self.a[:, 0] > 0).float()

    model = toy_model(fusion="weighted", modality_dropout=0.3)
    Trainer(model, TrainConfig(epochs=6, batch_size=64, lr=3e-3, patience=0), tmp_path / "m.pt", quiet=True).fit(
        OnlyA(1000, 0), OnlyA(200, 1))
    ds = OnlyA(200, 2)
    batch = collate_samples([ds[i] for i in range(len(ds))])
    contrib = masked_contributions(model, batch, "label")
    assert set(contrib) == {"a", "b"}
    assert contrib["a"].abs().mean() > 3 * contrib["b"].abs().mean()
    # Passing the caller's own encoding gives the same numbers without running the encoders again.
    model.eval()
    context = {"batch": batch}
    features, _ = model.encode(batch, context)
    calls = []
    hooks = [e.register_forward_hook(lambda *a: calls.append(1)) for e in model.encoders.values()]
    reused = masked_contributions(model, batch, "label", encoded=(features, context))
    for h in hooks:
        h.remove()
    assert calls == [] and all(torch.allclose(reused[m], contrib[m], atol=1e-6) for m in contrib)
    # Fusion weights after a forward favour "a" too.
    model.eval()
    weights = model(batch)["weights"]
    assert weights["a"].mean() > weights["b"].mean()


def test_decoding_cached_encodings_under_a_narrower_mask_equals_a_fresh_forward():
    from mmapps.model import FusionModel

    for fusion in ("concat", "weighted", "gated", "attention"):
        torch.manual_seed(0)
        model = toy_model(fusion=fusion, modality_dropout=0.0).eval()
        ds = ToyDataset(16, 3)
        batch = collate_samples([ds[i] for i in range(16)])
        context = {"batch": batch}
        features, present = model.encode(batch, context)
        reduced = {**present, "a": torch.arange(16) % 2 == 0}  # drop "a" from every other sample
        feats, ctx = FusionModel.with_present(features, context, reduced)
        cached = model.decode(feats, reduced, ctx)["outputs"]["label"]
        fresh = model({**batch, "present": reduced})["outputs"]["label"]
        assert torch.allclose(cached, fresh, atol=1e-6), fusion
        assert not torch.allclose(cached, model(batch)["outputs"]["label"], atol=1e-4)
