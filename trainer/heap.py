"""The C heap under torch on Linux (glibc): freed memory kept by the allocator is handed back, per-thread heaps capped.

Plain ctypes, no torch: the server and the training worker both use it. A no-op where the C library has no such calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util


def malloc_trim() -> None:
    """Give freed heap pages back to the system (glibc keeps them otherwise); a no-op elsewhere."""
    _call("malloc_trim", 0)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread heaps (M_ARENA_MAX): torch's threads otherwise each keep freed memory to themselves."""
    _call("mallopt", -8, arenas)  # M_ARENA_MAX


def _call(name: str, *args: int) -> None:
    """Call the C library's function `name`, where it has one."""
    try:
        getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)(*args)
    except (OSError, AttributeError):
        pass
