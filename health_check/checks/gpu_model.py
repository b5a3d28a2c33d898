"""What a vendor reader reports about one GPU, before the gpu check grades it.

Vendor readers (`nvidia`, `amd`) fill in readings and the findings only they can judge (ECC,
row remapping, an SMU that does not answer); `gpu` grades temperature and memory the same way
for every vendor and decides the check's status.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from health_check.result import Status, worst


@dataclass(frozen=True)
class Finding:
    status: Status
    text: str  # one line, without the "GPUn: " prefix


@dataclass
class GpuReading:
    index: int
    vendor: str  # "nvidia" or "amd"
    name: str = ""
    bus_id: str = ""  # PCI address as the driver spells it; Xid lines are matched on it
    temp_c: float | None = None
    slowdown_c: float | None = None  # the GPU's own limits, where it reports them
    shutdown_c: float | None = None
    mem_used: int | None = None  # bytes
    mem_total: int | None = None
    util_pct: float | None = None  # how busy its compute units were lately
    findings: list[Finding] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)  # readings the GPU does not support
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, bytes used)

    @property
    def label(self) -> str:
        return f"GPU{self.index}"

    @property
    def mem_pct(self) -> float | None:
        if self.mem_used is None or not self.mem_total:
            return None
        return 100.0 * self.mem_used / self.mem_total

    @property
    def status(self) -> Status:
        return worst(f.status for f in self.findings)

    def add(self, status: Status, text: str) -> None:
        self.findings.append(Finding(status, text))


@dataclass
class VendorScan:
    """One vendor's answer: its GPUs, and findings that belong to no single GPU."""

    vendor: str
    present: bool  # the vendor's driver or tool answered (False: no such GPU here)
    gpus: list[GpuReading] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # why it found nothing, in words
