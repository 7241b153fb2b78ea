"""torchrun --nproc_per_node 2 on CPU: both ranks train, only rank 0 writes, the loss goes down."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(ROOT / "tests/core/ddp_train.py"), str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    reports = [json.loads((tmp_path / f"ddp.pt.rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in reports] == [2, 2]
    for r in reports:
        h = r["history"]
        assert len(h) == 2 and h[1]["train_loss"] < h[0]["train_loss"]
    # Identical averaged losses on both ranks: they trained one model together.
    assert reports[0]["history"][1]["train_loss"] == reports[1]["history"][1]["train_loss"]
    written = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".json"))
    assert written == ["ddp.last.pt", "ddp.metrics.jsonl", "ddp.pt"]
    assert len((tmp_path / "ddp.metrics.jsonl").read_text().splitlines()) == 2  # one writer, not two
