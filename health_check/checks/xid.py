"""NVIDIA Xid events in the kernel log, graded by what they say about the GPU.

The NVIDIA driver logs every GPU error as `NVRM: Xid (PCI:0000:3b:00): 79, pid=..., ...`.
Xids that mean broken or unreliable hardware are CRITICAL; Xids that usually mean a faulty
application are at most WARNING, since the GPU itself still works (crash-detector reports the
application's crash). The kernel log lasts until reboot, so a CRITICAL Xid keeps the GPU
CRITICAL until then, and a reboot (or at least a GPU reset) is what those Xids call for anyway.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from health_check.result import Status

# Xid -> (status, meaning). Sources: NVIDIA's "Xid Errors" catalog and its GPU debug
# guidelines; the status is ours. Xids not listed are WARNING: unknown, so worth a look.
XIDS: dict[int, tuple[Status, str]] = {
    # Usually the application: a bad kernel, an out-of-range access, a killed process.
    13: (Status.WARNING, "graphics engine exception (usually an application bug)"),
    31: (Status.WARNING, "GPU memory page fault (usually an application bug)"),
    43: (Status.OK, "GPU stopped processing for one application (the GPU is fine)"),
    45: (Status.OK, "preemptive cleanup after an earlier error or a killed process"),
    8: (Status.WARNING, "GPU stopped processing (hung kernel or driver timeout)"),
    32: (Status.WARNING, "invalid or corrupted push buffer stream"),
    61: (Status.WARNING, "internal micro-controller breakpoint"),
    109: (Status.WARNING, "context switch timeout"),
    # The hardware or its firmware: drain the node, reset the GPU or reboot, maybe replace it.
    48: (Status.CRITICAL, "double-bit ECC error"),
    62: (Status.CRITICAL, "internal micro-controller halt"),
    63: (Status.CRITICAL, "ECC page retirement or row remapping recorded (reset the GPU)"),
    64: (Status.CRITICAL, "ECC page retirement or row remapping failed"),
    74: (Status.CRITICAL, "NVLink error"),
    79: (Status.CRITICAL, "GPU has fallen off the bus"),
    92: (Status.CRITICAL, "high single-bit ECC error rate"),
    94: (Status.CRITICAL, "contained ECC error (reset the GPU)"),
    95: (Status.CRITICAL, "uncontained ECC error (reset the GPU)"),
    119: (Status.CRITICAL, "GSP RPC timeout"),
    120: (Status.CRITICAL, "GSP firmware error"),
    140: (Status.CRITICAL, "unrecovered ECC error"),
    154: (Status.CRITICAL, "GPU recovery action changed (the driver asks for a reset or reboot)"),
}

_XID_LINE = re.compile(
    r"NVRM: Xid \((?:PCI:)?(?P<bus>[0-9a-fA-F]+:[0-9a-fA-F]+:[0-9a-fA-F]+)(?:\.[0-9a-fA-F])?\):"
    r"\s*(?P<xid>\d+)"
)
_BUS_ID = re.compile(r"(?:([0-9a-fA-F]+):)?([0-9a-fA-F]+):([0-9a-fA-F]+)(?:\.[0-9a-fA-F])?")


@dataclass(frozen=True)
class XidEvent:
    bus: tuple[int, int, int]  # (domain, bus, device): how NVML's bus id and Xid lines agree
    xid: int

    @property
    def status(self) -> Status:
        return XIDS.get(self.xid, (Status.WARNING, ""))[0]

    @property
    def meaning(self) -> str:
        return XIDS.get(self.xid, (Status.WARNING, "not in our table; see NVIDIA's Xid catalog"))[1]


class KernelLogUnavailable(Exception):
    """The kernel log could not be read (no permission, no dmesg): Xids are then unknown."""


def parse_xids(text: str) -> list[XidEvent]:
    events = []
    for match in _XID_LINE.finditer(text):
        bus = bus_key(match["bus"])
        if bus is not None:
            events.append(XidEvent(bus, int(match["xid"])))
    return events


def bus_key(bus_id: str) -> tuple[int, int, int] | None:
    """`00000000:3B:00.0` (NVML) and `0000:3b:00` (an Xid line) give the same key."""
    match = _BUS_ID.fullmatch(bus_id.strip())
    if match is None:
        return None
    domain, bus, device = match.groups()
    return int(domain or "0", 16), int(bus, 16), int(device, 16)


def read_kernel_log(timeout: float) -> str:
    """The kernel ring buffer through `dmesg`, which may be refused (kernel.dmesg_restrict)."""
    try:
        done = subprocess.run(
            ["dmesg"],
            capture_output=True,
            timeout=timeout,  # run() kills dmesg when it expires
            check=False,
        )
    except FileNotFoundError as exc:
        raise KernelLogUnavailable("dmesg is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise KernelLogUnavailable(f"dmesg gave no answer within {timeout:g} s") from exc
    except OSError as exc:
        raise KernelLogUnavailable(f"cannot run dmesg: {exc}") from exc
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        raise KernelLogUnavailable(
            f"dmesg failed: {reason[0] if reason else f'exit code {done.returncode}'}"
        )
    return done.stdout.decode(errors="replace")
