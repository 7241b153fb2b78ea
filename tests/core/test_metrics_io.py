import numpy as np
import pytest

from mmapps.io import atomic_dir, atomic_write_text
from mmapps.metrics import binary_metrics, expected_calibration_error
from mmapps.parallel import parallel_map, parse_shard, shard_items
from mmapps.errors import UserError


def test_ece_known_values():
    # Perfectly calibrated in each bin -> 0; always 0.9 on a 50 % base rate -> 0.4.
    y = np.array([1, 0] * 50)
    assert expected_calibration_error(y, np.full(100, 0.5)) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.full(100, 0.9)) == pytest.approx(0.4)
    assert expected_calibration_error([1, 1], [1.0, 1.0]) == pytest.approx(0.0)  # p == 1 lands in the last bin
    # against true probabilities instead of labels (a synthetic cohort's oracle): no label noise
    q = np.linspace(0.05, 0.95, 100)
    assert expected_calibration_error(q, q) == pytest.approx(0.0)
    assert expected_calibration_error(q, np.clip(q + 0.1, 0, 1)) == pytest.approx(0.1, abs=0.01)


def test_binary_metrics_match_known_cases():
    y = np.array([0, 0, 1, 1])
    m = binary_metrics(y, [0.1, 0.2, 0.8, 0.9])
    assert m["auroc"] == 1.0 and m["auprc"] == 1.0 and m["sensitivity_at_90_specificity"] == 1.0
    assert m["brier"] == pytest.approx((0.01 + 0.04 + 0.04 + 0.01) / 4)
    m = binary_metrics(y, [0.9, 0.8, 0.2, 0.1])
    assert m["auroc"] == 0.0
    assert np.isnan(binary_metrics([1, 1], [0.2, 0.3])["auroc"])


def test_atomic_writes_leave_nothing_on_failure(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as d:
            (d / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with atomic_dir(tmp_path / "out") as d:
        (d / "done.txt").write_text("ok")
    assert (tmp_path / "out" / "done.txt").read_text() == "ok"


def _square(x):
    return x * x


def test_shards_and_workers():
    assert parse_shard("1/3") == (1, 3) and parse_shard(None) == (0, 1)
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad)
    items = list(range(10))
    parts = [shard_items(items, i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == items
    assert parallel_map(_square, items, workers=2) == [x * x for x in items]


def _worker_flag(_):
    from mmapps.parallel import in_pool_worker, thread_count

    return in_pool_worker() and thread_count(8) == 1


def test_pool_workers_know_they_are_workers():
    """Code that spreads work over threads (the nodule finder's scales) stays on one thread inside a pool."""
    assert parallel_map(_worker_flag, [0, 1, 2], workers=2) == [True, True, True]
    assert parallel_map(_worker_flag, [0, 1], workers=1) == [False, False]
    from mmapps.parallel import thread_count

    assert thread_count(1) == 1 and 1 <= thread_count(8, cap=2) <= 2


def test_atomic_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    atomic_write_text(tmp_path / "p.txt", "x")
    mode = stat.S_IMODE(os.stat(tmp_path / "p.txt").st_mode)
    assert mode & stat.S_IRGRP  # readable by others like any normal output (mkstemp alone gives 0600)


def test_parallel_map_after_torch_has_run_threads():
    # A plain fork after torch's OpenMP pool started can hang; the fork-server pool must not.
    import torch

    torch.ones(256, 256) @ torch.ones(256, 256)
    assert parallel_map(_square, list(range(6)), workers=2, chunksize=2) == [x * x for x in range(6)]


def test_parallel_map_returns_tensors_by_value_under_a_low_open_files_limit():
    """Thousands of tensors from workers must not each hold a file descriptor in the parent (torch's shared-memory
    handles did: a 4,000-study cohort ran out of 20,000 descriptors). 1,200 tensors under a 256 limit here."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import resource, torch\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "from mmapps.parallel import parallel_map\n"
        "from tests.core.toy import tensor_sample\n"
        "out = parallel_map(tensor_sample, range(400), workers=2, chunksize=8)\n"
        "assert all(o['x'][0].item() == i and o['parts'][1][0].item() == 2 * i for i, o in enumerate(out))\n"
        "assert isinstance(out[7]['parts'][1], tuple) and isinstance(out[7]['x'], torch.Tensor)\n"
        "print('ok', len(out))\n")
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok 400" in res.stdout, res.stderr[-2000:]
