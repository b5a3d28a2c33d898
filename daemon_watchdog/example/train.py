#!/usr/bin/env python3
"""Worker of the example training daemon: a small, deterministic NumPy MLP trainer.

`daemon.py` runs it as `python DIR/train.py --base-dir DIR [--job FILE] [--resume-from CKPT]
[--fault ...]` (`seed.py` copies this file into the workspace). It reads `DIR/config.json`,
trains a 32-64-1 tanh MLP with plain SGD on data generated from the seed, writes
`status/progress.json` after every step and `checkpoints/checkpoint-<step>/` every `save_steps`
steps and at the end.

`--job FILE` trains an inbox job instead: FILE (`inbox/claimed/<name>.json`) overrides knobs of
config.json; the checkpoints go to the job's own `checkpoints/jobs/<name>/`, each
trainer_state.json names the job, and a checkpoint of another job (or of the config.json job)
is refused, so a job can only ever be resumed from its own.
The optional `checkpoint_layout` knob makes it save files instead, written in place as
Lightning's ModelCheckpoint (`epoch=0-step=<step>.ckpt` plus `last.ckpt`, pattern `*.ckpt`) or
a plain `torch.save` loop (`ckpt_<step:06>.pt`, pattern `ckpt_*.pt`) does: a zip in torch.save's
shape holding the weights and trainer state.

Every step's randomness is a pure function of (seed, step) and SGD keeps no optimizer state, so a
run resumed from a checkpoint ends bit-identical to an uninterrupted one.

SIGTERM / SIGINT stop the run at the next step boundary with exit code 143 / 130 (an interrupted
run is not a finished one). SIGUSR1 prints every thread's stack (faulthandler).

Fault injection -- SIMULATION for tests and demos, never a real defect:
`--fault KIND@STEP` fires when the worker is about to run step STEP. KIND is one of
  exception   raise a RuntimeError (traceback, exit 1)
  segfault    a real SIGSEGV (faulthandler prints "Fatal Python error: Segmentation fault")
  hang        block forever inside `_wait_for_allreduce`, like a stuck collective
  exit:N      exit with code N
  cuda_oom    a `torch.OutOfMemoryError: CUDA out of memory...` traceback, exit 1
  cuda_oom:N  the same, on every run while batch_size > N (a GPU whose memory fits N): the
              watchdog's `[watchdog.recovery] cuda_oom = { halve = "config:batch_size" }` ends it
  nan         the step's loss becomes NaN; the trainer aborts with FloatingPointError
A fault fires once per workspace: the marker `status/fault-fired-<KIND>@<STEP>` is written before
it fires and suppresses it afterwards, so a supervisor that restarts the daemon recovers.
`--fault-every-run` ignores the marker (a crash loop).

The environment variable BATCH_SIZE, when set, overrides config.json's batch_size (what
`[watchdog.recovery] host_oom = { halve = "env:BATCH_SIZE" }` turns); an inbox job file that
sets its own batch_size overrides both, so recovery does not reach it.
"""

from __future__ import annotations

import os

# One BLAS thread: a threaded BLAS may split sums differently from run to run, and a resumed run
# must reproduce an uninterrupted one bit for bit. Must happen before numpy is imported.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import ctypes  # noqa: E402
import faulthandler  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import pickle  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from types import FrameType  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
from safetensors.numpy import load as load_tensors  # noqa: E402
from safetensors.numpy import save as save_tensors  # noqa: E402

from trainguard.atomicio import fsync_dir, write_json_atomic  # noqa: E402
from trainguard.progress import ProgressWriter  # noqa: E402

Array = npt.NDArray[np.float32]
Params = dict[str, Array]

INPUT_DIM = 32
TRAIN_SAMPLES = 4096
VAL_SAMPLES = 512
# SeedSequence spawn keys, so the data and each step's batch draw from independent streams.
# seed.py draws the initial weights from spawn key (2,).
STREAM_DATA = 0
STREAM_BATCH = 1

CONFIG_KEYS = (
    "base_model",
    "batch_size",
    "learning_rate",
    "save_steps",
    "seed",
    "step_seconds",
    "total_steps",
)
LAYOUTS = {"folder": "checkpoint-*", "lightning": "*.ckpt", "plain": "ckpt_*.pt"}
OPTIONAL_KEYS = {"checkpoint_layout": "folder"}
# An inbox job's checkpoints: checkpoints/jobs/<name>/checkpoint-<step>/, out of the watchdog's
# sight (its pattern matches checkpoints/ only), so `--resume-from` always means config.json's job.
JOBS_DIR = "jobs"
FAULT_KINDS = ("exception", "segfault", "hang", "exit:N", "cuda_oom", "cuda_oom:N", "nan")
_FAULT_RE = re.compile(
    r"(exception|segfault|hang|cuda_oom(?::(\d{1,9}))?|nan|exit:(\d{1,3}))@(\d+)"
)
BATCH_SIZE_ENV = "BATCH_SIZE"

log = logging.getLogger("train")


# --- config -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    base_model: Path
    total_steps: int
    save_steps: int
    step_seconds: float
    seed: int
    batch_size: int
    learning_rate: float
    checkpoint_layout: str = "folder"
    job: str | None = None  # the inbox job's name; None for the config.json job

    def checkpoint_root(self, base_dir: Path) -> Path:
        root = base_dir / "checkpoints"
        return root if self.job is None else root / JOBS_DIR / self.job


class JobFileError(ValueError):
    """An inbox job file that cannot be trained as written: one `<file>: key: problem` a line."""


def load_config(base_dir: Path, job: Path | None = None) -> Config:
    """Read and check `config.json`, then the `job` file's overrides when one is given.

    Every problem becomes one `config.json: key: problem` line (ValueError), or for the job file
    one `<name>.json: key: problem` line (JobFileError): the job is refused, config.json is fine.
    """
    data = _read_object(base_dir / "config.json", "config.json")
    problems = _problems(data, "config.json", known={*CONFIG_KEYS, *OPTIONAL_KEYS}, complete=True)
    override = os.environ.get(BATCH_SIZE_ENV)
    if override is not None and not problems:
        value = int(override) if override.strip().isdigit() else override
        problems = _problems({"batch_size": value}, f"${BATCH_SIZE_ENV}", known={"batch_size"},
                             complete=False)  # fmt: skip
        data = {**data, "batch_size": value}
    if problems:
        raise ValueError("\n".join(problems))
    if job is None:
        return _config_from(data, base_dir, None)
    try:
        overrides = _read_object(job, job.name)
    except OSError as exc:
        raise JobFileError(f"{job.name}: cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise JobFileError(str(exc)) from None
    problems = _problems(overrides, job.name, known={*CONFIG_KEYS, *OPTIONAL_KEYS}, complete=False)
    if "checkpoint_layout" in overrides:
        problems.append(f"{job.name}: checkpoint_layout: an inbox job always saves folders")
    if problems:
        raise JobFileError("\n".join(problems))
    # config.json's layout is the watchdog's business; a job's folders are the daemon's.
    merged = {**data, **overrides, "checkpoint_layout": "folder"}
    return _config_from(merged, base_dir, job.stem)


def _read_object(path: Path, source: str) -> dict[str, Any]:
    with open(path, "rb") as fh:
        text = fh.read()
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source}: must be a JSON object, got {type(data).__name__}")
    return data


def _problems(data: dict[str, Any], source: str, *, known: set[str], complete: bool) -> list[str]:
    """What is wrong with the knobs in `data`; `complete`: every knob must be there."""
    problems = [f"{source}: {key}: unknown key" for key in sorted(set(data) - known)]
    if complete:
        problems += [f"{source}: {key}: missing" for key in CONFIG_KEYS if key not in data]

    def check(key: str, ok: bool, expected: str) -> None:
        if key in data and not ok:
            problems.append(f"{source}: {key}: must be {expected}, got {data[key]!r}")

    def is_int(key: str, low: int, high: int | None = None) -> bool:
        value = data.get(key)
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value >= low
            and (high is None or value <= high)
        )

    def is_number(key: str, low: float, *, strict: bool) -> bool:
        value = data.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        return math.isfinite(value) and (value > low if strict else value >= low)

    base_model = data.get("base_model")
    check("base_model", isinstance(base_model, str) and bool(base_model), "a non-empty path")
    check("total_steps", is_int("total_steps", 1), "an integer >= 1")
    check("save_steps", is_int("save_steps", 1), "an integer >= 1")
    check("seed", is_int("seed", 0), "an integer >= 0")
    check(
        "batch_size",
        is_int("batch_size", 1, TRAIN_SAMPLES),
        f"an integer between 1 and {TRAIN_SAMPLES}",
    )
    check("step_seconds", is_number("step_seconds", 0, strict=False), "a number >= 0")
    check("learning_rate", is_number("learning_rate", 0, strict=True), "a number > 0")
    check("checkpoint_layout", data.get("checkpoint_layout") in LAYOUTS, f"one of {list(LAYOUTS)}")
    return problems


def _config_from(data: dict[str, Any], base_dir: Path, job: str | None) -> Config:
    return Config(
        base_model=base_dir / str(data["base_model"]),  # an absolute base_model replaces base_dir
        total_steps=data["total_steps"],
        save_steps=data["save_steps"],
        step_seconds=float(data["step_seconds"]),
        seed=data["seed"],
        batch_size=data["batch_size"],
        learning_rate=float(data["learning_rate"]),
        checkpoint_layout=data.get("checkpoint_layout", OPTIONAL_KEYS["checkpoint_layout"]),
        job=job,
    )


# --- fault injection (simulation) -------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    kind: str  # one of FAULT_KINDS, with "exit:N" stored as "exit"
    step: int
    exit_code: int = 0
    max_batch: int | None = None  # cuda_oom:N: fires while batch_size > N, on every run

    @property
    def spec(self) -> str:
        kind = f"exit:{self.exit_code}" if self.kind == "exit" else self.kind
        if self.max_batch is not None:
            kind = f"{kind}:{self.max_batch}"
        return f"{kind}@{self.step}"


def parse_fault(text: str) -> Fault:
    """argparse type for `--fault KIND@STEP`."""
    match = _FAULT_RE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected KIND@STEP with KIND one of {', '.join(FAULT_KINDS)}"
        )
    kind, fits, code, step = match.group(1), match.group(2), match.group(3), int(match.group(4))
    if step < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: STEP must be >= 1")
    if fits is not None:
        return Fault("cuda_oom", step, max_batch=int(fits))
    if code is None:
        return Fault(kind, step)
    if int(code) > 255:
        raise argparse.ArgumentTypeError(f"{text!r}: exit code must be between 0 and 255")
    return Fault("exit", step, int(code))


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.OutOfMemoryError, so the traceback reads like a real CUDA OOM."""


OutOfMemoryError.__module__ = "torch"


def claim_fault(
    fault: Fault, step: int, status_dir: Path, *, every_run: bool, batch_size: int = 0
) -> bool:
    """Whether `fault` fires now; records the once-per-workspace marker before it does."""
    if fault.step != step:
        return False
    if fault.max_batch is not None:  # a memory limit, not a one-off: no marker
        if batch_size <= fault.max_batch:
            log.info("simulated fault %s: batch_size %d fits; no OOM", fault.spec, batch_size)
        return batch_size > fault.max_batch
    if every_run:
        return True
    marker = status_dir / f"fault-fired-{fault.spec}"
    if marker.exists():
        log.info("simulated fault %s already fired in this workspace; skipping it", fault.spec)
        return False
    status_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"fault": fault.spec, "pid": os.getpid(), "at": time.time()})
    return True


def inject(fault: Fault) -> None:
    """Fire the faults that strike before a step runs; `nan` and `hang` strike inside it."""
    if fault.kind == "exception":
        raise RuntimeError(f"simulated failure at step {fault.step} (--fault {fault.spec})")
    if fault.kind == "exit":
        logging.shutdown()
        sys.exit(fault.exit_code)
    if fault.kind == "cuda_oom":
        _allocate_activations()
    if fault.kind == "segfault":
        # No core file for a simulated crash: it would only fill the disk.
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
        sys.stdout.flush()
        ctypes.string_at(0)


def _allocate_activations() -> None:
    raise OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB"
        " of which 1.06 GiB is free. Including non-PyTorch memory, this process has 78.08 GiB"
        " memory in use. Of the allocated memory 75.62 GiB is allocated by PyTorch, and 1.93 GiB"
        " is reserved by PyTorch but unallocated. If reserved but unallocated memory is large"
        " try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
        "  See documentation for Memory Management"
        "  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
    )


def _wait_for_allreduce(peer_done: threading.Event) -> None:
    peer_done.wait()  # the peer never answers: blocked like a stuck NCCL collective


# --- model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    x_train: Array
    y_train: Array
    x_val: Array
    y_val: Array


def make_data(seed: int) -> Dataset:
    """A fixed regression task drawn from the seed: y = sin(x.w) + noise."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(STREAM_DATA,)))
    n = TRAIN_SAMPLES + VAL_SAMPLES
    x = rng.standard_normal((n, INPUT_DIM), dtype=np.float32)
    teacher = rng.standard_normal((INPUT_DIM, 1), dtype=np.float32) / np.float32(
        math.sqrt(INPUT_DIM)
    )
    noise = rng.standard_normal((n, 1), dtype=np.float32) * np.float32(0.05)
    y = (np.sin(x @ teacher) + noise).astype(np.float32)
    return Dataset(x[:TRAIN_SAMPLES], y[:TRAIN_SAMPLES], x[TRAIN_SAMPLES:], y[TRAIN_SAMPLES:])


def check_params(params: Params) -> None:
    expected_keys = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    if set(params) != expected_keys:
        raise ValueError(f"expected tensors {sorted(expected_keys)}, found {sorted(params)}")
    hidden = params["fc1.bias"].shape[0] if params["fc1.bias"].ndim == 1 else -1
    shapes = {
        "fc1.weight": (hidden, INPUT_DIM),
        "fc1.bias": (hidden,),
        "fc2.weight": (1, hidden),
        "fc2.bias": (1,),
    }
    for key, shape in shapes.items():
        tensor = params[key]
        if tensor.dtype != np.float32 or tensor.shape != shape or hidden < 1:
            found = f"{tensor.dtype} {tensor.shape}"
            raise ValueError(f"{key}: expected float32 {shape}, found {found}")


def load_weights(path: Path) -> Params:
    """Load and check MLP weights; a missing file raises the plain FileNotFoundError."""
    with open(path, "rb") as fh:
        return weights_from(fh.read(), path)


def weights_from(blob: bytes, path: Path) -> Params:
    try:
        loaded = load_tensors(blob)
        # Fresh, owned arrays: frombuffer views are read-only and may be oddly aligned.
        params = {key: np.array(value, copy=True) for key, value in loaded.items()}
        check_params(params)
    except Exception as exc:
        raise CorruptCheckpointError(f"cannot load weights from {path}: {exc}") from exc
    return params


class CorruptCheckpointError(RuntimeError):
    """Weights or trainer state that cannot be read back."""


def forward(params: Params, x: Array) -> tuple[Array, Array]:
    hidden = np.tanh(x @ params["fc1.weight"].T + params["fc1.bias"])
    return hidden, hidden @ params["fc2.weight"].T + params["fc2.bias"]


def mse(pred: Array, y: Array) -> float:
    err = pred - y
    return float(np.mean(err * err))


def gradients(params: Params, x: Array, y: Array) -> tuple[float, Params]:
    hidden, pred = forward(params, x)
    loss = mse(pred, y)
    d_pred = (pred - y) * np.float32(2.0 / x.shape[0])
    d_z = (d_pred @ params["fc2.weight"]) * (np.float32(1.0) - hidden * hidden)
    grads = {
        "fc2.weight": d_pred.T @ hidden,
        "fc2.bias": d_pred.sum(axis=0),
        "fc1.weight": d_z.T @ x,
        "fc1.bias": d_z.sum(axis=0),
    }
    return loss, grads


def allreduce(grads: Params, *, stuck: bool) -> Params:
    """Sum gradients across ranks. There is one rank here, unless a hang is simulated."""
    if stuck:
        _wait_for_allreduce(threading.Event())
    return grads


def train_step(params: Params, data: Dataset, cfg: Config, step: int, fault: Fault | None) -> float:
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(STREAM_BATCH, step)))
    index = rng.integers(0, TRAIN_SAMPLES, size=cfg.batch_size)
    x, y = data.x_train[index], data.y_train[index]
    if fault is not None and fault.kind == "nan":
        x = x * np.float32("nan")  # a poisoned batch
    loss, grads = gradients(params, x, y)
    if not math.isfinite(loss):
        return loss  # never step on a NaN: the caller aborts before the weights are touched
    grads = allreduce(grads, stuck=fault is not None and fault.kind == "hang")
    lr = np.float32(cfg.learning_rate)
    for key, grad in grads.items():
        params[key] -= lr * grad
    return loss


# --- checkpoints ------------------------------------------------------------------------------


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def save_checkpoint(
    root: Path, params: Params, state: dict[str, Any], layout: str = "folder"
) -> Path:
    """Save in `layout`; a folder is staged in `tmp-checkpoint-<step>`, then renamed."""
    if layout != "folder":
        return _save_file_checkpoint(root, params, state, layout)
    step = state["global_step"]
    final = root / f"checkpoint-{step}"
    staging = root / f"tmp-checkpoint-{step}"
    if staging.exists():
        shutil.rmtree(staging)  # left by a run killed mid-save
    staging.mkdir(parents=True)
    _write_synced(staging / "model.safetensors", save_tensors(params))
    _write_synced(staging / "trainer_state.json", json.dumps(state, indent=2).encode() + b"\n")
    fsync_dir(staging)
    if final.exists():
        # Rerunning steps after resuming from an older checkpoint: replace without a moment
        # in which no checkpoint-<step> exists.
        stale = root / f"tmp-stale-checkpoint-{step}"
        if stale.exists():
            shutil.rmtree(stale)
        os.rename(final, stale)
        os.rename(staging, final)
        shutil.rmtree(stale)
    else:
        os.rename(staging, final)
    fsync_dir(root)
    return final


def _save_file_checkpoint(root: Path, params: Params, state: dict[str, Any], layout: str) -> Path:
    """One file written in place, as Lightning and plain torch.save loops do: a crash during
    the write leaves it cut short under its final name."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(state, protocol=2))
        archive.writestr(f"archive/{TRAINER_STATE}", json.dumps(state))
        archive.writestr(f"archive/{WEIGHTS_MEMBER}", save_tensors(params))
    blob = buffer.getvalue()
    root.mkdir(parents=True, exist_ok=True)
    step = state["global_step"]
    if layout == "lightning":
        path = root / f"epoch=0-step={step}.ckpt"
        _write_synced(path, blob)
        _write_synced(root / "last.ckpt", blob)
    else:
        path = root / f"ckpt_{step:06d}.pt"
        _write_synced(path, blob)
    fsync_dir(root)
    return path


TRAINER_STATE = "trainer_state.json"
WEIGHTS_MEMBER = "data/model.safetensors"


def _read_checkpoint(ckpt: Path) -> tuple[bytes, bytes]:
    """trainer state and weights, from a checkpoint folder or file."""
    if ckpt.is_dir():
        return (ckpt / TRAINER_STATE).read_bytes(), (ckpt / "model.safetensors").read_bytes()
    try:
        with zipfile.ZipFile(ckpt) as archive:
            state = archive.read(f"archive/{TRAINER_STATE}")
            weights = archive.read(f"archive/{WEIGHTS_MEMBER}")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"not a checkpoint file: {exc}") from None
    return state, weights


def load_checkpoint(ckpt: Path, cfg: Config) -> tuple[Params, dict[str, Any]]:
    try:
        state_bytes, weights = _read_checkpoint(ckpt)
        state = json.loads(state_bytes)
        step = state.get("global_step") if isinstance(state, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"trainer_state.json: global_step must be an integer >= 0: {step!r}")
        params = weights_from(weights, ckpt)
    except (OSError, ValueError, CorruptCheckpointError) as exc:
        raise CorruptCheckpointError(f"cannot resume from {ckpt}: {exc}") from exc
    if state.get("job") != cfg.job:
        raise ValueError(
            f"cannot resume from {ckpt}: it belongs to {_job_label(state.get('job'))},"
            f" not to {_job_label(cfg.job)}"
        )
    if state.get("seed") != cfg.seed:
        raise ValueError(
            f"cannot resume from {ckpt}: it was trained with seed {state.get('seed')!r},"
            f" {'config.json' if cfg.job is None else f'job {cfg.job!r}'} has seed {cfg.seed}"
        )
    return params, state


def _job_label(job: object) -> str:
    return "the config.json job" if job is None else f"inbox job {job!r}"


# --- the run ----------------------------------------------------------------------------------


SAVED_FOR_STOP_WAIT = 10.0  # seconds to wait for the stop after a checkpoint asked for one


class StopRequest:
    """The stop signal received, acted on at the next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.received = threading.Event()

    def handle_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        self.received.set()

    def handle_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        self.received.set()

    def wait(self, timeout: float) -> None:
        """Until a stop signal arrives (its handler, run in this thread, ends the wait)."""
        self.received.wait(timeout)


def run(args: argparse.Namespace) -> int:
    base = Path(args.base_dir)
    cfg = load_config(base, None if args.job is None else Path(args.job))
    status_dir = base / "status"
    progress = ProgressWriter(status_dir / "progress.json", total_steps=cfg.total_steps)
    # An inbox job's lines and progress name it; the config.json job's stay as they always were.
    tag = "" if cfg.job is None else f"job {cfg.job}: "
    named = {} if cfg.job is None else {"job": cfg.job}
    stop = StopRequest()
    signal.signal(signal.SIGTERM, stop.handle_sigterm)
    signal.signal(signal.SIGINT, stop.handle_sigint)

    loss: float | None = None
    eval_loss: float | None = None
    if args.resume_from is not None:
        params, state = load_checkpoint(Path(args.resume_from), cfg)
        start = state["global_step"] + 1
        loss, eval_loss = state.get("loss"), state.get("eval_loss")
        log.info("%sresuming from %s at step %d (batch_size %d)", tag, args.resume_from, start,
                 cfg.batch_size)  # fmt: skip
    else:
        params = load_weights(cfg.base_model)
        start = 1
        log.info("%straining from %s (batch_size %d)", tag, cfg.base_model, cfg.batch_size)
    data = make_data(cfg.seed)
    fault: Fault | None = args.fault
    every_run: bool = args.fault_every_run

    for step in range(start, cfg.total_steps + 1):
        if stop.signum is not None:
            name = signal.Signals(stop.signum).name
            log.info("received %s: stopping before step %d", name, step)
            return 128 + stop.signum
        firing = None
        if fault is not None and claim_fault(
            fault, step, status_dir, every_run=every_run, batch_size=cfg.batch_size
        ):
            firing = fault
            log.warning("SIMULATED FAULT (--fault %s): injecting it now", fault.spec)
            inject(fault)
        loss = train_step(params, data, cfg, step, firing)
        if not math.isfinite(loss):
            progress.write(step, "train", loss=loss, **named)
            raise FloatingPointError(f"Loss is NaN at step {step}")
        time.sleep(cfg.step_seconds)  # the GPU time this step would take
        progress.write(step, "train", loss=loss, **named)
        log.info("%sstep %d/%d loss=%.6f", tag, step, cfg.total_steps, loss)
        requested = progress.save_requested()  # a planned stop: save this step first (#20)
        if step % cfg.save_steps == 0 or step == cfg.total_steps or requested:
            progress.write(step, "eval", loss=loss, **named)
            eval_loss = mse(forward(params, data.x_val)[1], data.y_val)
            progress.write(step, "save", loss=loss, eval_loss=eval_loss, **named)
            state = {
                "global_step": step,
                "max_steps": cfg.total_steps,
                "loss": loss,
                "eval_loss": eval_loss,
                "seed": cfg.seed,
                **named,
            }
            root = cfg.checkpoint_root(base)
            path = save_checkpoint(root, params, state, cfg.checkpoint_layout)
            log.info("%sstep %d: eval_loss=%.6f, saved %s", tag, step, eval_loss, path)
            if requested:
                progress.saved()
                log.info("%sstep %d: saved as the watchdog asked before stopping", tag, step)
                # The stop follows at once: a step trained now would be lost with it.
                stop.wait(SAVED_FOR_STOP_WAIT)

    progress.write(cfg.total_steps, "done", loss=loss, eval_loss=eval_loss, **named)
    log.info("%straining done: %d steps", tag, cfg.total_steps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Example training worker (NumPy MLP). --fault is SIMULATION for tests/demos.",
        epilog="Fault injection" + __doc__.split("Fault injection", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--base-dir", required=True, metavar="DIR", help="the workspace (holds config.json)"
    )
    parser.add_argument(
        "--job", metavar="FILE", help="train this inbox job: a JSON object of config.json overrides"
    )
    parser.add_argument("--resume-from", metavar="CHECKPOINT_DIR", help="continue from here")
    parser.add_argument(
        "--fault", type=parse_fault, metavar="KIND@STEP", help="SIMULATION: inject a fault"
    )
    parser.add_argument(
        "--fault-every-run", action="store_true", help="fire the fault even if it fired before"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    faulthandler.enable(all_threads=True)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    handler = logging.StreamHandler(sys.stdout)
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03dZ train[%(process)d] %(message)s", "%Y-%m-%dT%H:%M:%S"
    )
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
