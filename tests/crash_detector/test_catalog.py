"""The bundled rule catalog on real-looking log tails: every category, and benign look-alikes.

These logs are written from the public wording of each framework's errors; the labelled dev
set in ../shared/data is scored by bench/score_crash_detector.py, never copied here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crash_detector.classify import classify_text
from crash_detector.rule_schema import parse_catalog
from crash_detector.rules import (
    BUNDLED_LABEL,
    CATEGORIES,
    NON_RETRYABLE,
    RulesError,
    bundled_catalog,
    bundled_text,
    load_rules,
)
from crash_detector.scanner import Scanner

SCANNER = Scanner(load_rules())

CRASHES = {
    "cuda_oom": [
        "Traceback (most recent call last):\n"
        '  File "train.py", line 88, in step\n'
        "    loss.backward()\n"
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
        "total capacity of 79.10 GiB of which 1.02 GiB is free.",
        "2024-05-01 12:00:00.1: W tensorflow/core/common_runtime/bfc_allocator.cc:479] "
        "Allocator (GPU_0_bfc) ran out of memory trying to allocate 1.5GiB\n"
        "tensorflow.python.framework.errors_impl.ResourceExhaustedError: OOM when allocating "
        "tensor with shape[64,1024,1024] and type float on /job:localhost/replica:0/task:0/"
        "device:GPU:0 by allocator GPU_0_bfc",
    ],
    "cuda_error": [
        "RuntimeError: CUDA error: an illegal memory access was encountered\n"
        "CUDA kernel errors might be asynchronously reported at some other API call, so the "
        "stacktrace below might be incorrect.\n"
        "terminate called after throwing an instance of 'c10::Error'\n"
        "  what():  CUDA error: an illegal memory access was encountered",
        "../aten/src/ATen/native/cuda/Indexing.cu:1141: indexSelectLargeIndex: block: [0,0,0], "
        "thread: [0,0,0] Assertion `srcIndex < srcSelectDimSize` failed.\n"
        "RuntimeError: CUDA error: device-side assert triggered",
        "RuntimeError: CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx( "
        "handle, opa, opb, m, n, k, &falpha, a, CUDA_R_16F, lda, b, CUDA_R_16F, ldb, &fbeta, "
        "c, CUDA_R_16F, ldc, CUDA_R_32F, CUBLAS_GEMM_DFALT_TENSOR_OP)`",
    ],
    "nccl": [
        "[rank3]:[E ProcessGroupNCCL.cpp:563] [Rank 3] Watchdog caught collective operation "
        "timeout: WorkNCCL(SeqNum=1842, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, "
        "Timeout(ms)=600000) ran for 600041 milliseconds before timing out.",
        "torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/"
        "ProcessGroupNCCL.cpp:1970, unhandled system error (run with NCCL_DEBUG=INFO for "
        "details), NCCL version 2.20.5",
    ],
    "host_oom": [
        "epoch 3:  41%|####      | 410/1000 [10:02<14:26,  1.47s/it]\nKilled",
        "[12345.678901] Out of memory: Killed process 4242 (python) total-vm:98765432kB, "
        "anon-rss:65432100kB, file-rss:0kB, shmem-rss:0kB, UID:1000 pgtables:130000kB "
        "oom_score_adj:0",
    ],
    "segfault": [
        "Fatal Python error: Segmentation fault\n\n"
        "Current thread 0x00007f0d (most recent call first):\n"
        '  File "/usr/lib/python3/site-packages/torch/nn/functional.py", line 2233 in embedding\n'
        "Segmentation fault (core dumped)",
    ],
    "disk_full": [
        "Traceback (most recent call last):\n"
        '  File "trainer.py", line 2500, in _save_checkpoint\n'
        "    torch.save(state, path)\n"
        "OSError: [Errno 28] No space left on device",
        "RuntimeError: [enforce fail at inline_container.cc:595] . unexpected pos 1408 vs 1302",
    ],
    "timeout": [
        "torch.distributed.DistStoreError: Timed out after 901 seconds waiting for clients. "
        "1/2 clients joined.",
        "RuntimeError: Timed out initializing process group in store based barrier on rank 0, "
        "for key: store_based_barrier_key:1 (world_size=2, worker_count=1, timeout=0:30:00)",
    ],
    "import_error": [
        "Traceback (most recent call last):\n"
        '  File "train.py", line 3, in <module>\n'
        "    import flash_attn\n"
        "ModuleNotFoundError: No module named 'flash_attn'",
        "ImportError: /usr/lib/python3/site-packages/flash_attn_2_cuda.cpython-310-x86_64-"
        "linux-gnu.so: undefined symbol: _ZN3c104cuda9SetDeviceEi",
    ],
    "file_not_found": [
        "FileNotFoundError: [Errno 2] No such file or directory: '/data/train/shard-0007.parquet'",
    ],
    "permission_error": [
        "PermissionError: [Errno 13] Permission denied: '/shared/checkpoints/checkpoint-500'",
    ],
    "multiprocessing": [
        "RuntimeError: DataLoader worker (pid 23456) is killed by signal: Bus error. It is "
        "possible that dataloader's workers are out of shared memory. Please try to raise "
        "your shared memory limit.",
        "RuntimeError: DataLoader worker (pid(s) 1234, 1235) exited unexpectedly",
        "concurrent.futures.process.BrokenProcessPool: A process in the process pool was "
        "terminated abruptly while the future was running or pending.",
    ],
    "nan_loss": [
        "FloatingPointError: Minimum loss scale reached (0.0001). Your loss is probably "
        "exploding. Try lowering the learning rate, using gradient clipping or increasing "
        "the batch size.",
    ],
    "checkpoint_corrupt": [
        "RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central "
        "directory",
        "safetensors_rust.SafetensorError: Error while deserializing header: "
        "MetadataIncompleteBuffer",
    ],
    "gpu_hardware": [
        "[ 5301.123] NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus.",
        "[ 88.1] amdgpu 0000:c1:00.0: amdgpu: SMU: I'm not done with your previous command: "
        "SMN_C2PMSG_66:0x0000000D SMN_C2PMSG_82:0x00000000",
    ],
    "config_error": [
        "yaml.scanner.ScannerError: mapping values are not allowed here\n"
        '  in "configs/train.yaml", line 12, column 14',
        "train.py: error: unrecognized arguments: --lr-shedule cosine",
    ],
    "network": [
        "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='huggingface.co', "
        "port=443): Max retries exceeded with url: /api/models/gpt2 (Caused by "
        "NewConnectionError('<urllib3.connection.HTTPSConnection object at 0x7f>: Failed to "
        "establish a new connection: [Errno -3] Temporary failure in name resolution'))",
        "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:598] Connection closed "
        "by peer [10.0.0.2]:58123",
    ],
    "unknown": [
        "RuntimeError: one of the variables needed for gradient computation has been modified "
        "by an inplace operation: [torch.cuda.FloatTensor [64, 10]], which is output 0 of "
        "AsStridedBackward0, is at version 2; expected version 1 instead.",
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x512 and 256x10)",
    ],
}

BENIGN = [
    "{'loss': 0.4312, 'grad_norm': nan, 'learning_rate': 4.9e-05, 'epoch': 0.1}\n"
    "{'loss': 0.4101, 'grad_norm': 1.27, 'learning_rate': 4.8e-05, 'epoch': 0.2}",
    "[2024-01-01 10:00:00] [INFO] [loss_scaler.py:183:update_scale] [deepspeed] OVERFLOW! "
    "Rank 0 Skipping step. Attempted loss scale: 65536, reducing to 32768\n"
    "step 120 loss 2.31",
    "2024-03-01 10:00:00.123: W tensorflow/compiler/xla/stream_executor/platform/default/"
    "dso_loader.cc:64] Could not load dynamic library 'libnvinfer.so.7'; dlerror: "
    "libnvinfer.so.7: cannot open shared object file: No such file or directory",
    "eval: error_rate=0.1 accuracy=0.9\noom_score_adj set to 0 for pid 42",
    "`Trainer.fit` stopped: `max_epochs=10` reached.",
    "/usr/lib/python3/site-packages/torch/utils/data/dataloader.py:558: UserWarning: This "
    "DataLoader will create 16 worker processes in total. Our suggested max number of worker "
    "in current system is 8",
    "Epoch 10/10: 100%|##########| 500/500 [02:01<00:00, 4.12it/s, loss=0.0213]\n"
    "Training completed. Saving model to ./output",
]


def _primary_category(log: str, exit_code: int | None = None) -> str:
    primary = classify_text(log, exit_code=exit_code, scanner=SCANNER).primary
    return primary.category if primary else "none"


@pytest.mark.parametrize(
    ("category", "log"),
    [(category, log) for category, logs in CRASHES.items() for log in logs],
    ids=[f"{category}-{i}" for category, logs in CRASHES.items() for i in range(len(logs))],
)
def test_real_signatures_get_their_category(category: str, log: str) -> None:
    assert _primary_category(log) == category


@pytest.mark.parametrize("log", BENIGN, ids=[f"benign-{i}" for i in range(len(BENIGN))])
def test_benign_look_alikes_are_not_crashes(log: str) -> None:
    assert _primary_category(log) == "none"


def test_every_category_has_rules_and_a_suggestion() -> None:
    catalog = load_rules()
    covered = {rule.category for rule in catalog.rules}
    assert covered == set(CATEGORIES)
    assert all(len(rule.suggestion) > 20 for rule in catalog.rules)
    assert all(not rule.retryable for rule in catalog.rules if rule.category in NON_RETRYABLE)


def test_the_bundled_catalog_follows_the_schema_that_rules_files_must_follow() -> None:
    # load_rules() builds the bundled catalog without validating it: this test is the check.
    assert parse_catalog(bundled_text(), BUNDLED_LABEL) == bundled_catalog() == load_rules()


def test_a_damaged_bundled_catalog_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    damaged = bundled_text().replace('category = "cuda_oom"', 'kategory = "cuda_oom"', 1)
    monkeypatch.setattr("crash_detector.rules.bundled_text", lambda: damaged)
    with pytest.raises(RulesError, match=r"^rules\.toml \(bundled\): .*kategory.*reinstall"):
        load_rules()


def test_a_launcher_summary_after_an_oom_keeps_the_oom_as_root_cause() -> None:
    log = CRASHES["cuda_oom"][0] + (
        "\n[2024-01-01 10:00:00,000] [INFO] [launch.py:315:sigkill_handler] Killing subprocess 77\n"
        "subprocess.CalledProcessError: Command '['/usr/bin/python', '-u', 'train.py']' "
        "returned non-zero exit status 1.\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:"
    )
    assert _primary_category(log) == "cuda_oom"


@pytest.mark.parametrize(
    ("code", "category"), [(-9, "unknown"), (-11, "segfault"), (137, "unknown")]
)
def test_a_silent_log_is_classified_by_its_exit_status(code: int, category: str) -> None:
    assert _primary_category("step 10 loss 0.2\nstep 11 loss 0.2", exit_code=code) == category


def test_a_nan_loss_that_recovers_is_not_a_crash_but_one_that_stays_is() -> None:
    recovered = "step 10 loss: 2.31\nstep 11 loss: nan\nstep 12 loss: 2.29\nstep 13 loss: 2.28"
    assert _primary_category(recovered) == "none"
    stays = "step 10 loss: 2.31\nstep 11 loss: nan\nstep 12 loss: nan\nstep 13 loss=nan"
    assert _primary_category(stays) == "nan_loss"


def test_a_collapsing_fp16_loss_scale_is_nan_loss_but_one_overflow_is_benign() -> None:
    one = "Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale to 32768.0\nstep 5"
    assert _primary_category(one) == "none"
    scales = [2.0**-k for k in range(5, 40, 5)]
    collapse = "\n".join(
        f"Gradient overflow.  Skipping step, loss scaler 0 reducing loss scale to {s!r}"
        for s in scales
    )
    assert _primary_category(collapse) == "nan_loss"


def test_interleaved_ranks_do_not_hide_the_error_behind_a_frame_line() -> None:
    log = (
        'PermissionError  File "/opt/run/train.py", line 26, in main\n'
        ": [Errno 13] Permission denied: '/shared/out/checkpoint-1000'\n"
        '  File "/opt/run/trainer.py", line 99, in save\n'
        "    os.rename(tmp, final)\n"
    )
    assert _primary_category(log) == "permission_error"


@pytest.mark.parametrize(
    ("code", "category"),
    [
        ("import importlib; importlib.import_module('trainguard_no_such_mod')", "import_error"),
        ("import trainguard_no_such_mod", "import_error"),
        ("exec(compile('def f(:', 'train.py', 'exec'))", "import_error"),  # SyntaxError
        ("exec(compile('if 1:\\nprint(1)', 'train.py', 'exec'))", "import_error"),  # Indentation
        ("open('/nonexistent/trainguard/file')", "file_not_found"),
    ],
)
def test_real_tracebacks_whose_frames_quote_no_source_are_classified(
    code: str, category: str
) -> None:
    """`python -c` and frozen importlib frames have no source line under them."""
    import subprocess
    import sys

    stderr = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stderr
    assert _primary_category(stderr) == category, stderr


STEPS = "".join(f"step {i} loss {1 / i:.4f}\n" for i in range(1, 51))
CUDA_OOM = CRASHES["cuda_oom"][0] + "\n"


@pytest.mark.parametrize(
    "noise",
    [
        "set_mempolicy: Operation not permitted",
        "W0101 12:00:00.000 numa.cc:88] Failed to set thread affinity: Operation not permitted",
        "ls: cannot access '/opt/extra': No such file or directory",
        "/etc/profile.d/site.sh: line 3: /usr/local/bin/motd: Permission denied",
    ],
)
@pytest.mark.parametrize(
    ("crash", "category"),
    [
        ("Killed", "host_oom"),
        ("Segmentation fault (core dumped)", "segfault"),
        (CRASHES["nccl"][0], "nccl"),
    ],
)
def test_a_bare_errno_line_training_went_past_loses_to_the_crash_after_it(
    noise: str, crash: str, category: str
) -> None:
    """A tool's errno text is not the crash; a FATAL (non-retryable) verdict would be wrong."""
    primary = classify_text(noise + "\n" + STEPS + crash + "\n", scanner=SCANNER).primary
    assert primary is not None and (primary.category, primary.retryable) == (category, True)


@pytest.mark.parametrize(
    ("code", "category"),
    [
        ("open('/nonexistent/trainguard/shard-3.bin')", "file_not_found"),
        ("raise PermissionError(13, 'Permission denied', '/shared/ckpt')", "permission_error"),
        ("raise OSError(1, 'Operation not permitted')", "permission_error"),
    ],
)
def test_python_errno_exceptions_keep_their_priority_over_a_later_kill(
    code: str, category: str
) -> None:
    import subprocess
    import sys

    stderr = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stderr
    assert _primary_category(stderr + "Killed\n") == category, stderr


def test_a_nan_loss_beside_a_nan_grad_norm_is_a_nan_loss() -> None:
    log = (
        "{'loss': 1.2, 'grad_norm': 3.1, 'learning_rate': 1e-05, 'epoch': 0.1}\n"
        "{'loss': nan, 'grad_norm': nan, 'learning_rate': 1e-05, 'epoch': 0.2}\n"
        "{'loss': nan, 'grad_norm': nan, 'learning_rate': 1e-05, 'epoch': 0.3}\n"
    )
    assert _primary_category(log) == "nan_loss"
    recovered = log + "{'loss': 0.9, 'grad_norm': 2.0, 'learning_rate': 1e-05, 'epoch': 0.4}\n"
    assert _primary_category(recovered) == "none"


def test_a_retried_nccl_connection_that_training_went_past_is_no_crash() -> None:
    log = (
        "node1:123:456 [0] NCCL WARN socketStartConnect: Connect to 10.0.0.2<36712> failed : "
        "Connection refused, retrying\n" + STEPS
    )
    result = classify_text(log, scanner=SCANNER)
    assert result.primary is None and result.crashes == ()


def test_a_cuda_oom_training_went_past_is_survived() -> None:
    result = classify_text(CUDA_OOM + STEPS, scanner=SCANNER)
    assert [(c.cause.category, c.survived) for c in result.crashes] == [("cuda_oom", True)]
    assert result.primary is None


def test_a_cuda_oom_at_the_very_end_is_the_primary() -> None:
    result = classify_text(STEPS + CUDA_OOM, scanner=SCANNER)
    assert [(c.cause.category, c.survived) for c in result.crashes] == [("cuda_oom", False)]
    assert result.primary is not None and result.primary.category == "cuda_oom"


@pytest.mark.parametrize(
    "progress",
    [
        "Epoch 3:  41%|####      | 410/1000 [10:02<14:26,  1.47s/it]",
        "{'loss': 0.4312, 'grad_norm': 1.27, 'learning_rate': 4.9e-05, 'epoch': 0.1}",
        " iteration      120/  500000 | consumed samples: 3840 | elapsed time per iteration",
        "[2024-01-01 10:00:00] global_step=120 lr=0.0001",
        "Training completed. Do not forget to share your model on huggingface.co/models =)",
    ],
)
def test_common_progress_lines_show_that_training_went_on(progress: str) -> None:
    log = CUDA_OOM + "".join(f"rank0 tick {i}\n" for i in range(30)) + progress + "\n"
    result = classify_text(log, scanner=SCANNER)
    assert [c.survived for c in result.crashes] == [True]


def test_a_metrics_summary_printed_after_a_crash_is_not_progress() -> None:
    """wandb prints its run summary at exit, after the traceback that ended the run."""
    summary = "".join(
        f"wandb: {key:>24} {value}\n"
        for key, value in [("train/epoch", 0.5), ("train/global_step", 500), ("epoch", 3)] * 10
    )
    primary = classify_text(CUDA_OOM + "wandb: Run summary:\n" + summary, scanner=SCANNER).primary
    assert primary is not None and primary.category == "cuda_oom"


def test_a_rules_file_may_anchor_at_a_line_start_behind_its_prefixes(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(
        '[[rule]]\nid = "site.stuck"\ncategory = "timeout"\n'
        "pattern = '{line_start}Queue stuck\\b'\n"
        'priority = 80\nretryable = true\nsuggestion = "Restart the broker."\n'
    )
    scanner = Scanner(load_rules(site))
    for line in ("Queue stuck", "[rank0]: Queue stuck", "[1,0]<stderr>:Queue stuck"):
        primary = classify_text(line, scanner=scanner).primary
        assert primary is not None and primary.rule == "site.stuck", line
    assert classify_text("the Queue stuck", scanner=scanner).primary is None
