"""GPU availability, read from the real NVML: never simulated here."""

from __future__ import annotations

from typing import Any

from edge_cases.sandbox import Sandbox
from edge_cases.scenario import Scenario, ScenarioSkipped, expect

NAGIOS_CRITICAL = 2


def _nvml_devices() -> list[str]:
    """Names of the GPUs NVML sees; skips the scenario when there is no NVML or no GPU."""
    try:
        import pynvml
    except ImportError:
        raise ScenarioSkipped("pynvml is not installed") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise ScenarioSkipped(f"NVML does not initialise here: {exc}") from None
    try:
        names = []
        for index in range(int(pynvml.nvmlDeviceGetCount())):
            name: Any = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
    finally:
        pynvml.nvmlShutdown()
    if not names:
        raise ScenarioSkipped("NVML sees no GPU")
    return names


def gpu_availability(sb: Sandbox) -> str:
    devices = _nvml_devices()
    sb.create()
    sb.configure("health", gpus_expected=len(devices))
    code, report = sb.tool_json("health_check", "--only", "gpu")
    check = report.get("checks", [{}])[0]
    details = "\n".join(str(line) for line in check.get("details") or [])
    for index, name in enumerate(devices):
        expect(
            f"GPU{index} nvidia" in details and name in details,
            f"health-check gpu does not report GPU{index} ({name}): {details[:300]!r}",
        )
    # One more GPU than the node has must be CRITICAL: the count is really checked.
    sb.configure("health", gpus_expected=len(devices) + 1)
    missing, report = sb.tool_json("health_check", "--only", "gpu")
    summary = str(report.get("checks", [{}])[0].get("summary"))
    expect(
        missing == NAGIOS_CRITICAL,
        f"expecting {len(devices) + 1} GPUs on a {len(devices)}-GPU node: exit {missing}, "
        f"{summary!r}",
    )
    names = ", ".join(devices)
    return f"{len(devices)} GPU(s) reported ({names}; exit {code}); one more expected is CRITICAL"


SCENARIOS = (
    Scenario(
        name="gpu_availability",
        summary="health-check sees every GPU NVML sees, and a missing one is CRITICAL",
        fault="none injected: the real NVML; then gpus_expected set one above the count",
        expected="health-check --only gpu reports each device; expecting one more is CRITICAL",
        deadline=45,
        run=gpu_availability,
        requires="an NVIDIA GPU with NVML; skipped otherwise",
    ),
)
