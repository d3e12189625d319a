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
            _blas_limit = _blas_controller().limit(limits=1)
        _inside += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _inside -= 1
            if _inside == 0:
                _blas_limit.restore_original_limits()
                _blas_limit = None
        torch.set_num_threads(threads)
