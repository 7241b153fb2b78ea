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
