"""A persistent process pool for work that holds the GIL: pydicom header parsing of large
folders (:mod:`studies.discovery`), the pylibjpeg decoders (JPEG, JPEG-LS, RLE; measured:
pylibjpeg-openjpeg decodes 2 frames no faster on 2 threads than on 1, which is why JPEG 2000
now goes through imagecodecs on threads instead) and VTK surface extraction.

Created lazily on first use with the ``forkserver`` start method (safe from a process that
runs Qt threads), sized to the CPU count, and reused by every later load so its start-up cost
(about 0.3 s) is paid once per session.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor

__all__ = ["decode_pool", "ready_pool", "warm_pool", "shutdown_pool", "die_with_parent"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``).

    Safe to call in a ``preexec_fn`` or a pool initializer; returns ``False`` where prctl is not
    available (not Linux), ``True`` otherwise.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(owner: int) -> None:
    while True:
        time.sleep(1.0)
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            os._exit(0)
        except OSError:
            pass


def _worker_init(owner: int) -> None:
    """Pool initializer: a decode worker never outlives the process that owns the pool.

    The worker's parent is the forkserver, which exits when the owner does, so
    ``PR_SET_PDEATHSIG`` ends the worker then; a watchdog thread checks the owner's PID as well
    (the owner may be killed with SIGKILL, when no cleanup code runs).
    """
    die_with_parent(signal.SIGKILL)
    if os.getppid() != owner:
        threading.Thread(target=_watch, args=(owner,), daemon=True, name="owner-watch").start()

_pool: ProcessPoolExecutor | None = None
_pool_workers = 0  # max_workers of _pool (the executor keeps it only in a private attribute)
_lock = threading.Lock()


def decode_pool() -> ProcessPoolExecutor | None:
    """The shared pool, or ``None`` on a single-CPU machine (decode inline there)."""
    global _pool, _pool_workers
    n = os.cpu_count() or 1
    if n < 2 or os.environ.get("RADREVIEW_NO_PROCESS_POOL"):
        return None
    with _lock:
        if _pool is None:
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            ctx = multiprocessing.get_context(method)
            _pool = ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_worker_init,
                                        initargs=(os.getpid(),))
            _pool_workers = n
        return _pool


_warmup = None


def _noop() -> None:
    return None


def warm_pool() -> None:
    """Start the shared pool's workers in the background (no-op when started or unavailable)."""
    global _warmup
    pool = decode_pool()
    if pool is None:
        return
    with _lock:
        if _warmup is None or _warmup.cancelled():
            try:
                _warmup = [pool.submit(_noop) for _ in range(max(_pool_workers, 1))][-1]
            except RuntimeError:  # broken or shut down
                pass


def ready_pool() -> ProcessPoolExecutor | None:
    """The shared pool if its workers are up (started by :func:`warm_pool` or an earlier task), else ``None``.

    For work that can be done in this process when no warm pool is there (header parsing): the
    workers' start-up (about 0.4 s, each imports pydicom and NumPy) would otherwise be waited for.
    """
    if (os.cpu_count() or 1) < 2 or os.environ.get("RADREVIEW_NO_PROCESS_POOL"):
        return None
    with _lock:
        fut = _warmup
        pool = _pool
    if fut is None or pool is None:
        return None
    if not fut.done():
        return None
    if fut.cancelled() or fut.exception() is not None:  # a broken pool: work here
        return None
    return pool


@atexit.register
def shutdown_pool() -> None:
    """Stop the pool's workers (also run at interpreter exit)."""
    global _pool
    with _lock:
        if _pool is not None:
            _pool.shutdown(wait=False, cancel_futures=True)
            _pool = None
        global _warmup
        _warmup = None
