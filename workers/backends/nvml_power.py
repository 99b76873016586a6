"""Power modes on a GPU: a mode's throughput fraction becomes a limit on the graphics clock,
set through NVML (`nvidia-ml-py`, imported as `pynvml`).

A mode at fraction f locks the graphics clock to the lowest supported clock at or above
f × the highest supported one (decode and prefill throughput scale about with the clock, and
rounding up never promises less than the mode's throughput); fraction 1 resets the lock.

Locking clocks (`nvmlDeviceSetGpuLockedClocks`) needs root, or CAP_SYS_ADMIN in the container.
`check` tries it once at the replica's start (locking at the highest clock, then resetting) and
raises `PowerModeRefused` saying what is missing when any mode below full throughput could
not be enacted, so a site never counts on power savings it does not get. Modes at full
throughput alone need nothing, and NVML is then not touched.

The replica's GPU is the first CUDA device of its process (Ray sets CUDA_VISIBLE_DEVICES for
a replica with `num_gpus`); NVML numbers all of the node's GPUs, so the device is found by
its UUID, which CUDA and NVML share.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from cluster.power_modes import Mode
from workers.backends.contract import PowerModeRefused

log = logging.getLogger(__name__)

PERMISSION_HINT = (
    "locking GPU clocks needs root or the SYS_ADMIN capability in the container "
    "(securityContext.capabilities.add: [SYS_ADMIN]); run the replica so, or list only full-throughput power modes for this site"
)


def locked_clock_mhz(fraction: float, supported_mhz: Sequence[int]) -> int | None:
    """The graphics clock to lock at for `fraction` of full throughput; None: no lock (full)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"throughput fraction must be in (0, 1], got {fraction}")
    if not supported_mhz:
        raise ValueError("the GPU reports no supported graphics clocks")
    if fraction >= 1:
        return None
    highest = max(supported_mhz)
    target = fraction * highest
    return min(c for c in supported_mhz if c >= target - 1e-9)


def first_visible_gpu(cuda_visible_devices: str | None) -> str:
    """The first entry of CUDA_VISIBLE_DEVICES (an index or a GPU-/MIG- UUID); "0" when unset
    (the process sees every GPU and uses the first)."""
    if cuda_visible_devices is None:
        return "0"
    first = cuda_visible_devices.split(",")[0].strip()
    if not first or first == "-1":
        raise PowerModeRefused(f"CUDA_VISIBLE_DEVICES={cuda_visible_devices!r}: this process has no GPU to cap")
    return first


def nvml_uuid(cuda_uuid: Any) -> str:
    """NVML's name of a GPU ("GPU-<uuid>") from torch's `device properties.uuid`."""
    text = str(cuda_uuid)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


def _this_process_gpu() -> str:
    """The UUID (preferred) or index of the GPU this process's CUDA device 0 is."""
    try:
        import torch

        if torch.cuda.is_available():
            return nvml_uuid(torch.cuda.get_device_properties(0).uuid)
    except (ImportError, AttributeError, RuntimeError):
        pass
    return first_visible_gpu(os.environ.get("CUDA_VISIBLE_DEVICES"))


class NvmlPowerControl:
    """Enacts power modes on one GPU by locking its graphics clock."""

    def __init__(self, gpu: str) -> None:
        self.gpu = gpu  # "GPU-…"/"MIG-…" UUID or an NVML index
        self._nvml: Any = None
        self._handle: Any = None
        self._clocks: list[int] = []

    @classmethod
    def for_this_process(cls) -> NvmlPowerControl:
        return cls(_this_process_gpu())

    def _open(self) -> None:
        if self._handle is not None:
            return
        try:
            import pynvml
        except ImportError as e:
            raise PowerModeRefused(f"power modes below full throughput need NVML: nvidia-ml-py is not installed ({e}); install Pavana's 'gpu' extra") from e
        try:
            pynvml.nvmlInit()
            if self.gpu.startswith(("GPU-", "MIG-")):
                handle = pynvml.nvmlDeviceGetHandleByUUID(self.gpu)
            else:
                handle = pynvml.nvmlDeviceGetHandleByIndex(int(self.gpu))
            memory = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
            clocks = list(pynvml.nvmlDeviceGetSupportedGraphicsClocks(handle, memory))
        except pynvml.NVMLError as e:
            raise PowerModeRefused(f"NVML cannot reach GPU {self.gpu} ({e}): is the NVIDIA driver loaded in this container?") from e
        self._nvml, self._handle, self._clocks = pynvml, handle, clocks

    def _lock(self, mhz: int | None) -> None:
        nvml = self._nvml
        if mhz is None:
            nvml.nvmlDeviceResetGpuLockedClocks(self._handle)
        else:
            nvml.nvmlDeviceSetGpuLockedClocks(self._handle, mhz, mhz)

    def check(self, modes: Sequence[Mode]) -> None:
        capped = [m for m in modes if m.throughput_fraction < 1]
        for mode in modes:
            if not 0 < mode.throughput_fraction <= 1:
                raise ValueError(f"power mode {mode.name}: throughput fraction must be in (0, 1], got {mode.throughput_fraction}")
        if not capped:
            return
        names = ", ".join(m.name for m in capped)
        self._open()
        try:
            self._lock(max(self._clocks))
            self._lock(None)
        except self._nvml.NVMLError_NoPermission as e:
            raise PowerModeRefused(f"power modes {names} cannot be enacted on GPU {self.gpu}: {e}; {PERMISSION_HINT}") from e
        except self._nvml.NVMLError_NotSupported as e:
            raise PowerModeRefused(f"power modes {names} cannot be enacted: GPU {self.gpu} does not support locked clocks ({e})") from e
        except self._nvml.NVMLError as e:
            raise PowerModeRefused(f"power modes {names} cannot be enacted on GPU {self.gpu}: {e}") from e
        for mode in capped:
            log.info("power mode %s: graphics clock locked at %s MHz", mode.name, locked_clock_mhz(mode.throughput_fraction, self._clocks))

    def apply(self, mode: Mode) -> None:
        if mode.throughput_fraction >= 1 and self._handle is None:
            return  # never capped: nothing to reset
        self._open()
        mhz = locked_clock_mhz(mode.throughput_fraction, self._clocks)
        self._lock(mhz)
        log.info("power mode %s: %s", mode.name, "clock lock reset" if mhz is None else f"graphics clock locked at {mhz} MHz")

