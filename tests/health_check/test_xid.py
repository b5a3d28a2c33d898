"""Xid lines as the NVIDIA driver writes them, and reading the real kernel log."""

from __future__ import annotations

from pathlib import Path

import pytest

from health_check.checks.xid import (
    XIDS,
    KernelLogUnavailable,
    XidEvent,
    bus_key,
    parse_xids,
    read_kernel_log,
)
from health_check.result import Status

DMESG = "\n".join(
    [
        "[    3.120] nvidia: loading out-of-tree module taints kernel.",
        "[ 8812.551] NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>,"
        " GPU has fallen off the bus.",
        "[ 8812.552] NVRM: GPU 0000:3b:00.0: GPU has fallen off the bus.",
        "[ 9001.002] NVRM: Xid (PCI:0001:c1:00.0): 94, pid=3321, name=python3, Contained: SM.",
        "[ 9100.000] NVRM: Xid (0000:86:00): 13, Graphics SM Warp Exception on (GPC 0, TPC 1)",
    ]
)


def test_xid_lines_of_every_driver_generation_are_found() -> None:
    assert parse_xids(DMESG) == [
        XidEvent((0, 0x3B, 0), 79),
        XidEvent((1, 0xC1, 0), 94),
        XidEvent((0, 0x86, 0), 13),
    ]


def test_lines_that_only_mention_a_gpu_are_not_xids() -> None:
    assert parse_xids("NVRM: GPU 0000:3b:00.0: GPU has fallen off the bus.\nXid 79\n") == []


@pytest.mark.parametrize(
    ("nvml_bus_id", "xid_bus"),
    [("00000000:3B:00.0", "0000:3b:00"), ("0000:3b:00.0", "0000:3b:00"), ("3b:00.0", "0:3b:00")],
)
def test_nvml_and_kernel_bus_ids_name_the_same_gpu(nvml_bus_id: str, xid_bus: str) -> None:
    assert bus_key(nvml_bus_id) == bus_key(xid_bus) is not None


def test_a_bus_id_that_is_no_bus_id_matches_nothing() -> None:
    assert bus_key("N/A") is None


@pytest.mark.parametrize("xid", [48, 63, 64, 74, 79, 92, 94, 95, 119, 120])
def test_hardware_xids_are_critical(xid: int) -> None:
    assert XIDS[xid][0] == Status.CRITICAL


@pytest.mark.parametrize(
    ("xid", "status"),
    [(13, Status.WARNING), (31, Status.WARNING), (43, Status.OK), (45, Status.OK)],
)
def test_application_xids_are_at_most_warnings(xid: int, status: Status) -> None:
    assert XIDS[xid][0] == status


def test_an_xid_missing_from_the_table_is_a_warning() -> None:
    event = XidEvent((0, 1, 0), 4242)
    assert event.status == Status.WARNING
    assert "not in our table" in event.meaning


def test_the_real_kernel_log_is_read_or_refused_in_words() -> None:
    try:
        text = read_kernel_log(timeout=10)
    except KernelLogUnavailable as exc:
        assert str(exc).startswith(("dmesg failed: ", "dmesg is not installed", "cannot run"))
    else:
        assert isinstance(text, str)


def test_no_dmesg_is_unavailable_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no dmesg on the PATH
    with pytest.raises(KernelLogUnavailable, match="dmesg is not installed"):
        read_kernel_log(timeout=10)


def test_a_dmesg_that_refuses_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A dmesg that fails the way it does under kernel.dmesg_restrict for a non-root user.
    fake = tmp_path / "dmesg"
    fake.write_text(
        "#!/bin/sh\necho 'dmesg: read kernel buffer failed: Operation not permitted' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KernelLogUnavailable) as info:
        read_kernel_log(timeout=10)
    assert (
        str(info.value) == "dmesg failed: dmesg: read kernel buffer failed: Operation not permitted"
    )
