"""Entry point for the torchrun test: trains the toy task for two epochs under DDP (gloo on CPU)."""
import json
import os
import sys

from mmapps.trainer import TrainConfig, Trainer
from tests.core.toy import ToyDataset, toy_model

out = sys.argv[1]
history = Trainer(toy_model(), TrainConfig(epochs=2, batch_size=32, lr=3e-3, patience=0, seed=0), out,
                  quiet=True).fit(ToyDataset(512, 0), ToyDataset(128, 1))
rank = int(os.environ["RANK"])
# Every rank reports what it saw; only rank 0 may have written the checkpoint.
with open(f"{out}.rank{rank}.json", "w") as f:
    json.dump({"rank": rank, "world": int(os.environ["WORLD_SIZE"]), "history": history}, f)
