import pytest
import torch

from mmapps.device import apply_thread_limit, resolve_device
from mmapps.errors import UserError


def test_thread_limit_from_env(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("MMAPPS_THREADS", "1")
        apply_thread_limit()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_thread_limit_bad_value(monkeypatch, value):
    monkeypatch.setenv("MMAPPS_THREADS", value)
    with pytest.raises(UserError, match="MMAPPS_THREADS"):
        apply_thread_limit()


def test_resolve_device_refuses_unknown():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(UserError, match="--device"):
        resolve_device("tpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none: scripts/gpu_check.py)")
def test_bundled_detector_same_answers_on_cuda_and_cpu():
    """`--device auto` picks CUDA wherever there is one: the bundled detector (first stage + the point refiner, whose
    inputs are built on the CPU) must run there and give the CPU's boxes."""
    from driving import io
    from driving.pipeline import Pipeline
    from mmapps.paths import data_dir

    frame = io.load_frame(io.resolve_split(data_dir() / "driving" / "samples"), "000001")
    dets = {dev: Pipeline.from_checkpoint(device=dev).detect(frame) for dev in ("cpu", "cuda")}
    assert dets["cpu"] and len(dets["cpu"]) == len(dets["cuda"])
    for a, b in zip(dets["cpu"], dets["cuda"]):
        assert a["class"] == b["class"]
        assert abs(a["score"] - b["score"]) < 1e-3
        assert abs(a["box3d"] - b["box3d"]).max() < 1e-3
