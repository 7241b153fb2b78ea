"""Trainer: resume after a kill, checkpoints that refuse to run code, early stopping, metrics log."""
import json
import pickle
import zipfile

import pytest
import torch

from mmapps.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mmapps.trainer import TrainConfig, Trainer, last_checkpoint_path, metrics_path
from tests.core.toy import ToyDataset, toy_model


def _cfg(**kw):
    base = dict(epochs=2, batch_size=64, lr=3e-3, patience=0, seed=0, scheduler="cosine")
    base.update(kw)
    return TrainConfig(**base)


def test_resume_continues_at_epoch_2_with_the_same_optimizer_state(tmp_path):
    train, val = ToyDataset(400, 0), ToyDataset(100, 1)
    out = tmp_path / "m.pt"
    # First run is "killed" after epoch 1.
    Trainer(toy_model(), _cfg(), out, quiet=True, on_epoch_end=lambda epoch, rec: epoch == 0).fit(train, val)
    saved = load_checkpoint(last_checkpoint_path(out))["trainer"]
    assert saved["epoch"] == 0
    seen = {}

    class Spy(Trainer):
        def _optimizer(self, params):
            opt = super()._optimizer(params)
            seen["opt"] = opt
            return opt

    trainer = Spy(toy_model(), _cfg(), out, quiet=True, on_epoch_end=lambda epoch, rec: seen.setdefault("first", epoch) and False)
    # Capture the optimizer state right after resume, before epoch 2 changes it.
    original_fit = trainer._progress

    def progress(loader, description):
        if "resumed_state" not in seen:
            seen["resumed_state"] = {k: v["exp_avg"].clone() for k, v in seen["opt"].state_dict()["state"].items()}
            seen["description"] = description
        yield from original_fit(loader, description)

    trainer._progress = progress
    history = trainer.fit(train, val, resume=True)
    assert seen["first"] == 1 and seen["description"] == "epoch 2/2"
    assert [h["epoch"] for h in history] == [1, 2]
    for k, v in saved["optimizer"]["state"].items():
        assert torch.equal(seen["resumed_state"][k], v["exp_avg"])
    lines = [json.loads(l) for l in metrics_path(out).read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2]


def test_resume_without_state_is_a_clear_error(tmp_path):
    from mmapps.errors import UserError

    with pytest.raises(UserError, match="no resumable state"):
        Trainer(toy_model(), _cfg(), tmp_path / "m.pt", quiet=True).fit(ToyDataset(50, 0), resume=True)


def test_truncated_checkpoint_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", toy_model(), {"fusion": "weighted"}, {"labels": ["no", "yes"]})
    bundle = load_checkpoint(path)
    assert bundle["config"] == {"fusion": "weighted"} and bundle["meta"]["labels"] == ["no", "yes"]
    assert bundle["versions"]["torch"] == str(torch.__version__)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt: not a readable mmapps checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")


class Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/mmapps-pwned",))


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "mmapps-checkpoint/1", "state_dict": {}, "config": {}, "meta": {"x": Evil()}}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(path)
    (tmp_path / "plain.pt").write_bytes(pickle.dumps({"format": "mmapps-checkpoint/1"}))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_foreign_torch_file_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "f.pt")
    with pytest.raises(CheckpointError, match="format marker"):
        load_checkpoint(tmp_path / "f.pt")


def test_early_stopping_and_best_checkpoint(tmp_path):
    train, val = ToyDataset(200, 0), ToyDataset(100, 1)
    # A zero learning rate never improves val_loss after the first epoch: stops after `patience` epochs.
    history = Trainer(toy_model(), _cfg(epochs=10, lr=0.0, patience=2, scheduler="none"), tmp_path / "m.pt",
                      quiet=True).fit(train, val)
    assert len(history) == 3
    assert (tmp_path / "m.pt").exists()


def test_loss_decreases_and_adversarial_training_runs(tmp_path):
    train, val = ToyDataset(400, 0), ToyDataset(100, 1)
    history = Trainer(toy_model(), _cfg(epochs=4, adversarial="fgsm", epsilon=0.05), tmp_path / "m.pt",
                      quiet=True).fit(train, val)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
