"""Holds GPU memory through the CUDA driver API (libcuda through ctypes: no torch needed).

usage: holds_gpu_memory.py READY_FILE MIB -- allocates MIB MiB on GPU 0, then writes its pid to
READY_FILE and idles until signalled. Exits 3 without a CUDA driver, 4 when a CUDA call fails.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys


def main() -> None:
    ready, mib = sys.argv[1], int(sys.argv[2])
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        sys.exit(3)
    device = ctypes.c_int()
    context = ctypes.c_void_p()
    pointer = ctypes.c_uint64()
    # The primary context, as the CUDA runtime (and so PyTorch) uses it.
    calls = (
        lambda: cuda.cuInit(0),
        lambda: cuda.cuDeviceGet(ctypes.byref(device), 0),
        lambda: cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device),
        lambda: cuda.cuCtxSetCurrent(context),
        lambda: cuda.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(mib * 2**20)),
    )
    for call in calls:
        if call() != 0:
            sys.exit(4)
    with open(f"{ready}.tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(f"{ready}.tmp", ready)
    while True:
        signal.pause()  # idle until signalled, holding the memory


if __name__ == "__main__":
    main()
