"""AMD GPUs through `rocm-smi --json`, or the amdsmi library where rocm-smi is not installed.

rocm-smi runs in its own process group with a deadline: when the GPU's SMU (its power and
clock firmware) hangs, rocm-smi hangs with it, and only a process can be killed. Silence past
the deadline, or an SMU error in its output, is CRITICAL. amdsmi is a library inside our own
process, so a hang there is caught only by the runner's per-check timeout (UNKNOWN).
Readings that are "N/A" or all-ones (0xFFFF, 0xFFFFFFFF: "not supported" from the driver) are
N/A, never failures.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

from health_check.checks.gpu_model import Finding, GpuReading, VendorScan
from health_check.result import Status

SMI_ARGS = ("--showtemp", "--showmeminfo", "vram", "--showuse", "--json")

# Edge is the sensor comparable to NVIDIA's GPU temperature; Instinct boards have only the
# hotter junction (hotspot) sensor, so gpu_max_temp_c may need raising there.
_TEMP_KEYS = (
    "Temperature (Sensor edge) (C)",
    "Temperature (Sensor junction) (C)",
    "Temperature (Sensor memory) (C)",
)
_VRAM_TOTAL = "VRAM Total Memory (B)"
_VRAM_USED = "VRAM Total Used Memory (B)"
_NOT_AVAILABLE = {0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF}

# What amdgpu, rocm-smi and amdsmi say when the SMU stops answering.
SMU_ERROR = re.compile(
    r"\bSM[UC]\b[^\n]*(?:not (?:ready|respond)|time ?out|timed out|hang|hung|fail)"
    r"|Failed to send message|RSMI_STATUS_(?:BUSY|TIMEOUT)|AMDSMI_STATUS_(?:BUSY|TIMEOUT)",
    re.IGNORECASE,
)
_NO_DRIVER = re.compile(r"Driver not initiali[sz]ed|amdgpu not found|No AMD GPU", re.IGNORECASE)
_GPU_REF = re.compile(r"GPU\[(\d+)\]")


class _Timeout(Exception):
    pass


def read_amd(command: Sequence[str], timeout: float, amdsmi: Any | None = None) -> VendorScan:
    """AMD GPUs as rocm-smi reports them; amdsmi (`amdsmi`, else imported) without rocm-smi."""
    argv = [*command, *SMI_ARGS]
    tool = "rocm-smi"  # whatever runs it (a wrapper, a container exec), it speaks rocm-smi
    try:
        returncode, out, err = _run(argv, timeout)
    except FileNotFoundError:
        return read_amdsmi(amdsmi, notes=[f"{tool}: not installed"])
    except _Timeout:
        scan = VendorScan("amd", present=True)
        scan.findings.append(
            Finding(
                Status.CRITICAL,
                f"{tool} gave no answer within {timeout:g} s and was killed: the SMU is"
                " unresponsive (reset the GPU or reboot)",
            )
        )
        return scan
    except OSError as exc:
        return VendorScan("amd", present=False, notes=[f"{tool}: cannot run: {exc}"])
    return parse_rocm_smi(out, err, returncode, tool)


def _run(argv: list[str], timeout: float) -> tuple[int, str, str]:
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, so that a kill reaches its children
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise _Timeout from None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def parse_rocm_smi(out: str, err: str, returncode: int, tool: str = "rocm-smi") -> VendorScan:
    """Turn rocm-smi's JSON (and its complaints on stderr) into readings."""
    scan = VendorScan("amd", present=True)
    data = _json_object(out)
    smu_lines = [line for line in (out + "\n" + err).splitlines() if SMU_ERROR.search(line)]
    if data is None and not smu_lines:
        said = (err.strip() or out.strip()).splitlines()
        first = said[0][:200] if said else f"exit code {returncode}"
        if _NO_DRIVER.search(out + err) or returncode == 0:
            return VendorScan("amd", present=False, notes=[f"{tool}: {first}"])
        scan.findings.append(Finding(Status.WARNING, f"{tool} failed: {first}"))
        return scan
    for key, values in (data or {}).items():
        card = re.fullmatch(r"card(\d+)", key)
        if card is None or not isinstance(values, dict):
            continue  # "system" and other summary entries
        scan.gpus.append(_card(int(card[1]), values))
    by_index = {gpu.index: gpu for gpu in scan.gpus}
    for line in smu_lines:
        ref = _GPU_REF.search(line)
        gpu = by_index.get(int(ref[1])) if ref else None
        finding = Finding(Status.CRITICAL, f"SMU error: {line.strip()[:200]}")
        (gpu.findings if gpu else scan.findings).append(finding)
    if not scan.gpus and not scan.findings:
        return VendorScan("amd", present=False, notes=[f"{tool}: lists no AMD GPU"])
    return scan


def _card(index: int, values: dict[str, Any]) -> GpuReading:
    reading = GpuReading(index, "amd")
    reading.name = str(values.get("Card Series") or values.get("Device Name") or "")
    reading.bus_id = str(values.get("PCI Bus") or "")
    temps = [_number(values.get(key)) for key in _TEMP_KEYS if key in values]
    reading.temp_c = next((t for t in temps if t is not None), None)
    if reading.temp_c is None:
        reading.unavailable.append("temperature")
    reading.util_pct = _number(values.get("GPU use (%)"))
    used, total = _number(values.get(_VRAM_USED)), _number(values.get(_VRAM_TOTAL))
    if used is None or not total:
        reading.unavailable.append("memory")
    else:
        reading.mem_used, reading.mem_total = int(used), int(total)
    return reading


def _number(value: object) -> float | None:
    """A reading as a number; None for "N/A", garbage and the all-ones "not supported"."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if number != number or number < 0 or number in _NOT_AVAILABLE:  # NaN too
        return None
    return number


def _json_object(text: str) -> dict[str, Any] | None:
    """The JSON object in rocm-smi's output, which may follow warnings printed to stdout."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        data, _end = json.JSONDecoder().raw_decode(text, start)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


# --- amdsmi -------------------------------------------------------------------------------


def read_amdsmi(amdsmi: Any | None, notes: list[str] | None = None) -> VendorScan:
    """AMD GPUs through the amdsmi Python library (`amdsmi` None: import it, if installed)."""
    notes = list(notes or [])
    if amdsmi is None:
        try:
            import amdsmi as module  # type: ignore[import-not-found]
        except ImportError:
            return VendorScan("amd", present=False, notes=[*notes, "amdsmi: not installed"])
        amdsmi = module
    try:
        amdsmi.amdsmi_init()
    except amdsmi.AmdSmiException as exc:
        return VendorScan("amd", present=False, notes=[*notes, f"amdsmi: {exc}"])
    try:
        scan = VendorScan("amd", present=True, notes=notes)
        for index, handle in enumerate(amdsmi.amdsmi_get_processor_handles()):
            scan.gpus.append(_amdsmi_device(amdsmi, index, handle))
        return scan
    except amdsmi.AmdSmiException as exc:
        scan = VendorScan("amd", present=True, notes=notes)
        scan.findings.append(_amdsmi_failure("listing GPUs", exc))
        return scan
    finally:
        amdsmi.amdsmi_shut_down()


def read_amd_processes(amdsmi: Any | None = None) -> dict[int, list[tuple[int, int | None]]]:
    """The processes on each AMD GPU, by index: [(pid, VRAM bytes or None)], through amdsmi
    (`amdsmi` None: import it); {} without amdsmi or an AMD GPU. rocm-smi has no per-GPU
    process list worth parsing, so a machine with rocm-smi only lists none."""
    if amdsmi is None:
        try:
            import amdsmi as module
        except ImportError:
            return {}
        amdsmi = module
    try:
        amdsmi.amdsmi_init()
    except amdsmi.AmdSmiException:
        return {}
    found: dict[int, list[tuple[int, int | None]]] = {}
    try:
        for index, handle in enumerate(amdsmi.amdsmi_get_processor_handles()):
            try:
                listed = amdsmi.amdsmi_get_gpu_process_list(handle)
            except amdsmi.AmdSmiException:
                continue
            found[index] = [p for p in (_amd_process(amdsmi, handle, e) for e in listed) if p]
    except amdsmi.AmdSmiException:
        pass
    finally:
        amdsmi.amdsmi_shut_down()
    return found


def _amd_process(amdsmi: Any, handle: Any, entry: Any) -> tuple[int, int | None] | None:
    """(pid, VRAM bytes) of one process list entry: a dict (amdsmi >= 6), or a process handle
    to ask about (older amdsmi)."""
    info = entry
    if not isinstance(entry, dict):
        try:
            info = amdsmi.amdsmi_get_gpu_process_info(handle, entry)
        except (amdsmi.AmdSmiException, AttributeError):
            return None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
        return None
    usage = info.get("memory_usage")
    vram = usage.get("vram_mem") if isinstance(usage, dict) else info.get("mem")
    return info["pid"], int(vram) if isinstance(vram, int) else None


def _amdsmi_device(amdsmi: Any, index: int, handle: Any) -> GpuReading:
    reading = GpuReading(index, "amd")
    sensors = amdsmi.AmdSmiTemperatureType
    for sensor in (sensors.EDGE, sensors.HOTSPOT):
        temp = _amdsmi_call(
            amdsmi,
            reading,
            "temperature",
            amdsmi.amdsmi_get_temp_metric,
            handle,
            sensor,
            amdsmi.AmdSmiTemperatureMetric.CURRENT,
        )
        reading.temp_c = _number(temp)
        if reading.temp_c is not None:
            break
    else:
        reading.unavailable.append("temperature")
    vram = _amdsmi_call(amdsmi, reading, "memory", amdsmi.amdsmi_get_gpu_vram_usage, handle)
    used = _number(vram.get("vram_used")) if isinstance(vram, dict) else None
    total = _number(vram.get("vram_total")) if isinstance(vram, dict) else None
    if used is None or not total:
        reading.unavailable.append("memory")
    else:
        # Only the ratio is used, so whether this amdsmi counts in MB or bytes does not matter.
        reading.mem_used, reading.mem_total = int(used), int(total)
    return reading


def _amdsmi_call(amdsmi: Any, reading: GpuReading, what: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except amdsmi.AmdSmiException as exc:
        if SMU_ERROR.search(str(exc)):
            reading.findings.append(_amdsmi_failure(what, exc))
        return None  # not supported here, or not now: N/A, never a failure


def _amdsmi_failure(what: str, exc: Exception) -> Finding:
    if SMU_ERROR.search(str(exc)):
        return Finding(Status.CRITICAL, f"SMU error ({what}): {exc}")
    return Finding(Status.WARNING, f"amdsmi failed ({what}): {exc}")
