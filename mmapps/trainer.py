"""The one Trainer every scenario uses.

AdamW/Adam/SGD, cosine or one-cycle schedules, gradient clipping, mixed precision on CUDA, early stopping
on a validation metric, seeds, rich progress, metrics as JSON lines, resumable after a kill, and PyTorch
DDP when launched by ``torchrun`` (WORLD_SIZE set): gloo on CPU, nccl on GPU, DistributedSampler, and
only rank 0 writes files.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint
from .cli_utils import to_jsonable
from .config import check_choice, check_generic, check_range
from .data import collate_samples, move_to
from .errors import UserError


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    grad_clip: float = 1.0
    patience: int = 5
    monitor: str = "val_loss"
    mode: str = "min"
    seed: int = 0
    amp: bool = True
    num_workers: int = 0
    device: str = "auto"
    adversarial: str = "none"
    epsilon: float = 0.01

    def validate(self) -> None:
        check_choice("optimizer", self.optimizer, ["adamw", "adam", "sgd"])
        check_choice("scheduler", self.scheduler, ["cosine", "onecycle", "none"])
        check_choice("mode", self.mode, ["min", "max"])
        check_choice("adversarial", self.adversarial, ["none", "fgsm"])
        check_choice("device", self.device, ["auto", "cpu", "cuda"])
        check_range("epochs", self.epochs, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("lr", self.lr, 0.0)
        check_range("patience", self.patience, 0)
        check_range("epsilon", self.epsilon, 0.0)
        check_generic(self)  # finite numbers (lr=nan passes every range check), positive sizes


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class DistributedContext:
    """Process-group facts; a single process is world_size 1, rank 0."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1
        self._owns_group = False

    def setup(self, device: torch.device) -> None:
        import torch.distributed as dist

        if self.enabled and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            self._owns_group = True

    def teardown(self) -> None:
        import torch.distributed as dist

        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast_float(self, value: float) -> float:
        if not self.enabled:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(t, src=0)
        return float(t.item())

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size


def _device(name: str, dist_ctx: DistributedContext) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("device cuda: no CUDA device is available")
        return torch.device("cuda", dist_ctx.local_rank if dist_ctx.enabled else 0)
    return torch.device("cpu")


def last_checkpoint_path(out_path: Path) -> Path:
    """Where the resumable end-of-epoch state lives, next to the best-model checkpoint."""
    return out_path.with_name(out_path.stem + ".last.pt")


def metrics_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.stem + ".metrics.jsonl")


def describe_state_mismatch(model: nn.Module, state: dict) -> str:
    """What differs between a model and a state dict: missing/unexpected keys and shape changes (a few each)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            parts.append(f"{len(items)} {label}: {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}")
    return "; ".join(parts) or "the optimizer state does not fit the model's parameters"


def param_groups(model: nn.Module, lr: float) -> list[dict]:
    """Trainable parameters as optimizer groups: a submodule with an ``lr_scale`` attribute (e.g. pretrained
    layers being fine-tuned) trains at ``lr * lr_scale``, everything else at ``lr``."""
    scaled, seen = {}, set()
    for _, module in model.named_modules():
        scale = getattr(module, "lr_scale", None)
        if scale is None:
            continue
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                scaled.setdefault(float(scale), []).append(p)
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    return [{"params": rest, "lr": lr}] + [{"params": ps, "lr": lr * k} for k, ps in scaled.items()]


def _load_resume_state(model: nn.Module, optimizer, weights: dict, state: dict, path: Path) -> None:
    """Load the saved weights and optimizer; a different architecture is a clean error naming the mismatch."""
    try:
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"--resume: {path} was saved by a different model architecture or settings "
                        f"({describe_state_mismatch(model, weights)}); train without --resume or with the "
                        f"same settings") from e


class Trainer:
    """Train any module whose forward(batch) returns a dict with "loss" when the batch has targets.

    model_config: what the scenario needs to rebuild the model from the checkpoint alone.
    meta: label maps, preprocessing parameters, etc.; stored with the weights.
    eval_fn(model, loader, device) -> dict of metrics, must include cfg.monitor (default: val_loss).
    on_epoch_end(epoch, record) -> bool: return True to stop (used by tests to simulate a kill).
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, out_path: str | os.PathLike, meta: dict | None = None,
                 model_config: dict | None = None, collate_fn: Callable = collate_samples,
                 eval_fn: Callable | None = None, on_epoch_end: Callable | None = None,
                 input_keys: tuple[str, ...] | None = None, quiet: bool = False):
        cfg.validate()
        from .cli_utils import check_output_file

        check_output_file(out_path)  # an unwritable or impossible --out fails now, not after an epoch
        self.model = model
        self.cfg = cfg
        self.out_path = Path(out_path)
        self.meta = dict(meta or {})
        self.model_config = dict(model_config or {})
        self.collate_fn = collate_fn
        self.eval_fn = eval_fn
        self.on_epoch_end = on_epoch_end
        self.input_keys = input_keys  # continuous inputs perturbed by FGSM (default: every float tensor)
        self.quiet = quiet
        self.dist = DistributedContext()
        self.history: list[dict] = []

    # -- building blocks ---------------------------------------------------------------------------
    def _optimizer(self, params):
        """``params``: parameters or torch parameter groups (``param_groups``)."""
        c = self.cfg
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.SGD(params, lr=c.lr, momentum=0.9, weight_decay=c.weight_decay, nesterov=True)

    def _scheduler(self, optimizer, steps_per_epoch: int):
        total = max(1, self.cfg.epochs * steps_per_epoch)
        if self.cfg.scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=self.cfg.lr * 0.01)
        if self.cfg.scheduler == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                       total_steps=total)
        return None

    def _loader(self, dataset, train: bool, epoch_seed: int):
        from torch.utils.data import DataLoader
        from torch.utils.data.distributed import DistributedSampler

        sampler = None
        if self.dist.enabled and train:
            sampler = DistributedSampler(dataset, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                         shuffle=True, seed=self.cfg.seed)
        g = torch.Generator()
        g.manual_seed(epoch_seed)
        return DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=train and sampler is None,
                          sampler=sampler, collate_fn=self.collate_fn, num_workers=self.cfg.num_workers,
                          generator=g, drop_last=False)

    def _log(self, text: str) -> None:
        if self.dist.is_main and not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def _adversarial_loss(self, model, batch):
        """FGSM: perturb the continuous inputs along the sign of the loss gradient, return that loss."""
        keys = [k for k, v in batch.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
                and (self.input_keys is None or k in self.input_keys)]
        if not keys:
            return None
        leaves = {k: batch[k].detach().clone().requires_grad_(True) for k in keys}
        loss = model({**batch, **leaves})["loss"]
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        adv = {k: (leaves[k] + self.cfg.epsilon * g.sign()).detach() if g is not None else batch[k]
               for (k, g) in zip(keys, grads)}
        return model({**batch, **adv})["loss"]

    @torch.no_grad()
    def _val_loss(self, model, loader, device) -> dict:
        model.eval()
        total, n = 0.0, 0
        for batch in loader:
            batch = move_to(batch, device)
            out = model(batch)
            bs = len(batch.get("meta", [])) or 1
            total += float(out["loss"]) * bs
            n += bs
        return {"val_loss": total / max(n, 1)}

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, train_dataset, val_dataset=None, resume: bool = False) -> list[dict]:
        c = self.cfg
        device = _device(c.device, self.dist)
        self.dist.setup(device)
        try:
            return self._fit(train_dataset, val_dataset, resume, device)
        finally:
            self.dist.teardown()

    def _fit(self, train_dataset, val_dataset, resume, device) -> list[dict]:
        c = self.cfg
        seed_everything(c.seed)
        model = self.model.to(device)
        train_model = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # Modality dropout can leave an encoder unused in a step: tell DDP to expect that.
            train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                              find_unused_parameters=True)
        optimizer = self._optimizer(param_groups(model, c.lr))
        steps = math.ceil(len(train_dataset) / (c.batch_size * self.dist.world_size))
        scheduler = self._scheduler(optimizer, steps)
        use_amp = c.amp and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

        start_epoch, best, bad_epochs = 0, None, 0
        last_path = last_checkpoint_path(self.out_path)
        if resume:
            if not last_path.exists():
                raise UserError(f"--resume: no resumable state at {last_path} (train without --resume first)")
            bundle = load_checkpoint(last_path, map_location=device)
            state = bundle.get("trainer")
            if not state:
                raise UserError(f"{last_path}: holds no trainer state to resume from")
            _load_resume_state(model, optimizer, bundle["state_dict"], state, last_path)
            if scheduler is not None and state.get("scheduler"):
                scheduler.load_state_dict(state["scheduler"])
            start_epoch, best, bad_epochs = int(state["epoch"]) + 1, state.get("best"), int(state.get("bad_epochs", 0))
            self.history = list(state.get("history", []))
            torch.set_rng_state(state["rng"])
            self._log(f"resuming at epoch {start_epoch + 1}/{c.epochs} from {last_path}")

        sign = 1.0 if c.mode == "max" else -1.0
        for epoch in range(start_epoch, c.epochs):
            t0 = time.perf_counter()
            loader = self._loader(train_dataset, True, c.seed + epoch)
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            train_model.train()
            running, count = 0.0, 0
            for batch in self._progress(loader, f"epoch {epoch + 1}/{c.epochs}"):
                batch = move_to(batch, device)
                with torch.autocast(device.type, enabled=use_amp):
                    loss = train_model(batch)["loss"]
                    if c.adversarial == "fgsm":
                        adv = self._adversarial_loss(train_model, batch)
                        if adv is not None:
                            loss = 0.5 * (loss + adv)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if c.grad_clip and c.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                if scheduler is not None:
                    scheduler.step()
                running += float(loss.detach())
                count += 1
            record = {"epoch": epoch + 1, "train_loss": self.dist.mean(running / max(count, 1)),
                      "lr": optimizer.param_groups[0]["lr"]}
            if val_dataset is not None and len(val_dataset):
                val_loader = self._loader(val_dataset, False, 0)
                model.eval()
                metrics = self.eval_fn(model, val_loader, device) if self.eval_fn else self._val_loss(model, val_loader, device)
                if self.eval_fn and "val_loss" not in metrics and c.monitor == "val_loss":
                    metrics.update(self._val_loss(model, val_loader, device))
                record.update({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
            record["seconds"] = round(time.perf_counter() - t0, 3)
            monitor = record.get(c.monitor, record["train_loss"] if c.monitor == "val_loss" else None)
            if monitor is None:
                raise UserError(f"monitor {c.monitor!r} is not among the validation metrics: "
                                f"{', '.join(k for k in record if k not in ('epoch', 'lr', 'seconds'))}")
            monitor = self.dist.broadcast_float(float(monitor))  # every rank takes the same decision
            improved = best is None or sign * (monitor - best) > 1e-12
            if improved:
                best, bad_epochs = monitor, 0
            else:
                bad_epochs += 1
            record["best"] = best
            self.history.append(record)
            self._log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            if self.dist.is_main:
                meta = {**self.meta, "train_config": asdict(c), "history": self.history}
                if improved:
                    save_checkpoint(self.out_path, model, self.model_config, meta)
                save_checkpoint(last_path, model, self.model_config, meta, extra={
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "epoch": epoch, "best": best, "bad_epochs": bad_epochs, "history": self.history,
                    "rng": torch.get_rng_state()})
                with open(metrics_path(self.out_path), "a", encoding="utf-8") as f:
                    f.write(json.dumps(to_jsonable(record), allow_nan=False) + "\n")  # strict JSON: NaN -> null
            stop = c.patience > 0 and bad_epochs >= c.patience  # patience 0 disables early stopping
            if self.on_epoch_end is not None and self.on_epoch_end(epoch, record):
                break
            if stop:
                self._log(f"early stopping: {c.monitor} did not improve for {bad_epochs} epochs")
                break
        # Load the best weights back so the caller's model matches the saved checkpoint.
        if self.dist.enabled:
            import torch.distributed as dist

            dist.barrier()
        if self.out_path.exists():
            model.load_state_dict(load_checkpoint(self.out_path, map_location=device)["state_dict"])
        return self.history

    def _progress(self, loader, description: str):
        if self.quiet or not self.dist.is_main:
            yield from loader
            return
        from .progress import track

        yield from track(loader, description, total=len(loader))
