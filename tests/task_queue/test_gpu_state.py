from __future__ import annotations

import json

from task_queue.gpu_state import hardware_errors, read_gpu_state, visible_indexes
from tests.fakes import GIB, FakeGpu, FakeNvml

NO_AMD = ("/nonexistent/rocm-smi",)


def test_the_failed_attempts_gpu_is_recorded_with_what_is_wrong_and_who_holds_memory() -> None:
    nvml = FakeNvml([
        FakeGpu(temp=40),
        FakeGpu(temp=91, mem_used=79 * GIB, ecc_volatile_uncorrected=2, util=97,
                compute_procs=[(4242, 70 * GIB)], bus_id="00000000:5E:00.0"),
    ])  # fmt: skip
    dmesg = "NVRM: Xid (PCI:0000:5e:00): 79, pid=4242, GPU has fallen off the bus.\n"
    ecc = (
        "GPU1: CRITICAL: 2 volatile uncorrected ECC errors since the driver loaded (drain it "
        "and reset the GPU)"
    )
    state = read_gpu_state([1], nvml=nvml, rocm_smi=NO_AMD, kernel_log=lambda: dmesg, before={ecc})
    assert state is not None
    (gpu,) = state["gpus"]
    assert (gpu["index"], gpu["temp_c"], gpu["mem_used"], gpu["util_pct"]) == (1, 91, 79 * GIB, 97)
    # What was wrong when the attempt started is not new; the Xid and the heat are. The Xid
    # is a hardware error; the heat is not (it passes).
    new = state["new_errors"]
    assert [e.split(": ")[2] for e in new] == ["91°C", "Xid 79"]
    assert [e.split(": ")[2] for e in hardware_errors(new)] == ["Xid 79"]
    assert gpu["processes"] == [{"pid": 4242, "mem_used": 70 * GIB}]
    assert any("uncorrected" in finding for finding in gpu["findings"]), gpu["findings"]
    json.dumps(state)  # goes into the ledger as JSON
    assert [g["index"] for g in read_gpu_state(None, nvml=nvml, rocm_smi=NO_AMD)["gpus"]] == [0, 1]  # type: ignore[index]


def test_no_gpu_here_records_nothing() -> None:
    assert read_gpu_state([0], nvml=FakeNvml([]), rocm_smi=NO_AMD) is None


def test_cuda_visible_devices_names_the_gpus() -> None:
    assert visible_indexes(None) is None
    assert visible_indexes("") == []
    assert visible_indexes("2,3") == [2, 3]
