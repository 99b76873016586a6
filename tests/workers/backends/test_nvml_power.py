"""Power modes as GPU clock locks: the clock choice, the GPU lookup, and what `check` refuses
(with an NVML stand-in: there is no GPU here)."""

from __future__ import annotations

import sys
import types

import pytest

from cluster.power_modes import Mode
from workers.backends.contract import PowerModeRefused
from workers.backends.nvml_power import NvmlPowerControl, first_visible_gpu, locked_clock_mhz, nvml_uuid

CLOCKS = [1980, 1800, 1500, 1200, 900, 600]
FULL, HALF, LOW = Mode("full", 700, 1.0), Mode("half", 400, 0.5), Mode("low", 300, 0.3)


def test_the_clock_is_the_lowest_at_or_above_the_fraction():
    assert locked_clock_mhz(1.0, CLOCKS) is None
    assert locked_clock_mhz(0.5, CLOCKS) == 1200  # 990 MHz wanted
    assert locked_clock_mhz(0.3, CLOCKS) == 600  # 594 MHz wanted
    assert locked_clock_mhz(0.1, CLOCKS) == 600
    assert locked_clock_mhz(600 / 1980, CLOCKS) == 600


def test_bad_fractions_and_no_clocks_are_errors():
    with pytest.raises(ValueError):
        locked_clock_mhz(0.0, CLOCKS)
    with pytest.raises(ValueError):
        locked_clock_mhz(0.5, [])


def test_the_replicas_gpu():
    assert first_visible_gpu(None) == "0"
    assert first_visible_gpu("3,1") == "3"
    assert first_visible_gpu("GPU-abc,GPU-def") == "GPU-abc"
    with pytest.raises(PowerModeRefused):
        first_visible_gpu("")
    assert nvml_uuid("8f1c") == "GPU-8f1c" and nvml_uuid("GPU-8f1c") == "GPU-8f1c"


def fake_nvml(set_error: str | None = None, init_error: bool = False) -> types.ModuleType:
    nvml = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    nvml.NVMLError = NVMLError
    nvml.NVMLError_NoPermission = type("NVMLError_NoPermission", (NVMLError,), {})
    nvml.NVMLError_NotSupported = type("NVMLError_NotSupported", (NVMLError,), {})
    nvml.NVML_CLOCK_MEM = 2
    nvml.calls = []

    def init():
        if init_error:
            raise NVMLError("Driver Not Loaded")

    nvml.nvmlInit = init
    nvml.nvmlDeviceGetHandleByUUID = lambda uuid: ("handle", uuid)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)
    nvml.nvmlDeviceGetMaxClockInfo = lambda h, kind: 4800
    nvml.nvmlDeviceGetSupportedGraphicsClocks = lambda h, mem: CLOCKS

    def set_locked(h, low, high):
        if set_error:
            raise getattr(nvml, set_error)("Insufficient Permissions")
        nvml.calls.append(("lock", low, high))

    nvml.nvmlDeviceSetGpuLockedClocks = set_locked
    nvml.nvmlDeviceResetGpuLockedClocks = lambda h: nvml.calls.append(("reset",))
    return nvml


@pytest.fixture
def nvml(monkeypatch):
    def install(**kwargs):
        module = fake_nvml(**kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", module)
        return module

    return install


def test_full_throughput_modes_need_no_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # importing it would fail
    control = NvmlPowerControl("GPU-x")
    control.check([FULL])
    control.apply(FULL)


def test_check_probes_the_lock_and_apply_sets_the_clock(nvml):
    module = nvml()
    control = NvmlPowerControl("GPU-x")
    control.check([FULL, HALF])
    assert module.calls == [("lock", 1980, 1980), ("reset",)]
    control.apply(HALF)
    control.apply(FULL)
    assert module.calls[2:] == [("lock", 1200, 1200), ("reset",)]


def test_no_permission_is_refused_saying_what_is_missing(nvml):
    nvml(set_error="NVMLError_NoPermission")
    with pytest.raises(PowerModeRefused, match="SYS_ADMIN") as refused:
        NvmlPowerControl("0").check([FULL, HALF, LOW])
    assert "half, low" in str(refused.value)


def test_unsupported_gpus_and_missing_drivers_are_refused(nvml):
    nvml(set_error="NVMLError_NotSupported")
    with pytest.raises(PowerModeRefused, match="does not support locked clocks"):
        NvmlPowerControl("0").check([HALF])
    nvml(init_error=True)
    with pytest.raises(PowerModeRefused, match="driver"):
        NvmlPowerControl("0").check([HALF])


def test_missing_nvidia_ml_py_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(PowerModeRefused, match="nvidia-ml-py"):
        NvmlPowerControl("0").check([HALF])
