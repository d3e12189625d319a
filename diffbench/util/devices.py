"""Device, dtype and thread settings shared by the API, the runner, the metrics and the CLI."""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' → CUDA when present, else CPU; 'cuda[:i]' is checked to exist."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {str(device)!r} is not a device torch knows ({exc})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {str(device)!r} requested but MPS is not available")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {str(device)!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, default: torch.dtype = torch.float32) -> torch.dtype:
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; available: {', '.join(DTYPES)}") from None


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a clock read afterwards is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_THREADS_LOCK = threading.Lock()
_inside = 0  # threads now inside one_thread: the BLAS limits are process-wide, set by the first, undone by the last
_blas_limit: Any = None
_controller: tuple[int, Any] | None = None  # (len(sys.modules) when scanned, threadpoolctl's controller)


def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS/OpenMP libraries, scanned again only after new imports (a scan
    costs milliseconds, and a library such as scipy's OpenBLAS is loaded by an import)."""
    global _controller
    from threadpoolctl import ThreadpoolController

    if _controller is None or _controller[0] != len(sys.modules):
        _controller = (len(sys.modules), ThreadpoolController())
    return _controller[1]


def _release_blas_control() -> None:
    """Let the next thread that sets OpenBLAS's limit set it. threadpoolctl (3.6 and later) lets only one thread,
    the first to set a pthreads OpenBLAS's process-wide pool size, change it, and silently ignores the others
    until that thread releases control, which its own context manager does on exit. ``one_thread`` sets and
    restores the limit itself, from whichever thread enters first and leaves last, so it releases control
    around each set (under _THREADS_LOCK: no thread of ours sets the limit meanwhile). Without this, once the
    main thread had used ``one_thread`` a scoring thread's limit did nothing, and a restore from a thread
    other than the one that set the limit left BLAS on one thread for good."""
    import threadpoolctl

    release = getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None)
    if release is not None:
        release(force=True)


@contextmanager
def one_thread() -> Iterator[None]:
    """torch and every BLAS library (threadpoolctl) on one thread, restored afterwards.

    Sums then round alike in every process whatever its thread count (a Ray worker runs one thread, a
    local run two), and tiny tensors skip the thread pool's overhead. Safe on several threads at once
    (a harness probe beside a cell's scoring): torch's setting is per thread; the BLAS limits are
    process-wide, so they hold while any thread is inside.
    """
    global _inside, _blas_limit
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with _THREADS_LOCK:
        if _inside == 0:
            _release_blas_control()
            _blas_limit = _blas_controller().limit(limits=1)
            _release_blas_control()
        _inside += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _inside -= 1
            if _inside == 0:
                _release_blas_control()
                _blas_limit.restore_original_limits()
                _release_blas_control()
                _blas_limit = None
        torch.set_num_threads(threads)
