"""glibc malloc tuning (rlhfkit.training.allocator): when it applies, and that it does."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rlhfkit.training.allocator import glibc, why_not

GLIBC = sys.platform == "linux" and glibc()

# A fresh process allocates 24 MiB: with glibc's defaults a block that size is its own
# mmap, away from the heap; tuned, it comes from the heap, below the program break.
PROBE = """
import ctypes, sys
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = libc.sbrk.restype = ctypes.c_void_p
libc.sbrk.argtypes = [ctypes.c_long]
if sys.argv[1] == "tune":
    from rlhfkit.training.allocator import tune_malloc
    print(tune_malloc())
block = libc.malloc(24 << 20)
print("heap" if block < libc.sbrk(0) else "mmap")
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_why_not_respects_the_users_allocator_settings():
    assert why_not({}) is None
    assert "environment" in why_not({"MALLOC_ARENA_MAX": "2"})
    assert "environment" in why_not({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"})
    assert "preloaded" in why_not({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"})


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
@pytest.mark.parametrize("mode", ["tune", "default"])
def test_tuned_process_serves_large_blocks_from_the_heap(mode):
    env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_* from the test runner's environment
    lines = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, check=True
    ).stdout.splitlines()
    if mode == "tune":
        assert lines == ["mmap threshold 32 MiB, trim threshold 256 MiB", "heap"]
    else:
        assert lines == ["mmap"]  # the probe tells the two apart
