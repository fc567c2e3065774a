import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's allocator only")

# page faults per round of 8 MB buffers made, then freed together, as a batch of decoder passes does; "default" pins
# glibc's starting limits (128 kB to mmap and to trim; glibc then moves them with the blocks freed, differently
# from run to run)
_FAULTS = """
import resource, sys, torch
from pointsam_engine.memory import reuse_freed_buffers
if sys.argv[1] == "reuse":
    assert reuse_freed_buffers()
else:
    import ctypes
    libc = ctypes.CDLL("libc.so.6")
    assert libc.mallopt(-3, 128 * 1024) and libc.mallopt(-1, 128 * 1024)
def round():
    buffers = [torch.ones(2 * 2**20) for _ in range(12)]
for _ in range(10):  # glibc settles its heap in the first few
    round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    round()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_buffer(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def test_freed_decoder_buffers_are_reused_instead_of_faulted_in_again():
    assert _faults_per_buffer("default") > 1000  # fresh 4 kB pages every round
    assert _faults_per_buffer("reuse") < 10


def test_loading_a_model_on_the_cpu_applies_it(tiny_model):
    from pointsam_engine.memory import reuse_freed_buffers
    from pointsam_engine.sam.model import load_model

    reuse_freed_buffers.cache_clear()
    load_model(str(tiny_model), device="cpu", precision="fp32")
    assert reuse_freed_buffers.cache_info().currsize == 1
