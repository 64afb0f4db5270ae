#!/usr/bin/env python3
"""Compile the CUDA executor's kernels (mediator/src/kernels.cu) to the PTX the mediator
ships (mediator/src/kernels.ptx), so that a host with only the NVIDIA driver needs no
NVRTC at run time.

    scripts/kernels-ptx.py [LIBNVRTC]

LIBNVRTC: a libnvrtc.so to compile with; without it, the pinned NVRTC wheel
(nvidia-cuda-nvrtc-cu11 11.8.89: PTX ISA 7.8, which drivers since CUDA 11.8 load) is
fetched with pip into a temporary directory. The target is compute_75 (Turing and
newer); the mediator compiles the kernels with NVRTC instead on an older GPU. The first
line of the output names the FNV-1a hash of the source it was made from, which the
mediator's unit tests compare with kernels.cu.
"""

import ctypes
import pathlib
import subprocess
import sys
import tempfile
import zipfile

WHEEL = "nvidia-cuda-nvrtc-cu11==11.8.89"
ARCH = b"--gpu-architecture=compute_75"
ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = ROOT / "mediator/src/kernels.cu"
OUTPUT = ROOT / "mediator/src/kernels.ptx"


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def fetch_nvrtc(into: pathlib.Path) -> pathlib.Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", str(into)],
                   check=True)
    wheel = next(into.glob("*.whl"))
    zipfile.ZipFile(wheel).extractall(into)
    return next(into.glob("nvidia/cuda_nvrtc/lib/libnvrtc.so*"))


def compile_ptx(libnvrtc: pathlib.Path, source: bytes) -> bytes:
    nvrtc = ctypes.CDLL(str(libnvrtc))
    program = ctypes.c_void_p()

    def check(result, what):
        if result != 0:
            raise SystemExit(f"{what} failed ({result})")

    check(nvrtc.nvrtcCreateProgram(ctypes.byref(program), source, b"kernels.cu", 0, None, None),
          "nvrtcCreateProgram")
    options = (ctypes.c_char_p * 1)(ARCH)
    result = nvrtc.nvrtcCompileProgram(program, 1, options)
    if result != 0:
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(program, log)
        raise SystemExit(f"kernels.cu does not compile:\n{log.value.decode()}")
    size = ctypes.c_size_t()
    check(nvrtc.nvrtcGetPTXSize(program, ctypes.byref(size)), "nvrtcGetPTXSize")
    ptx = ctypes.create_string_buffer(size.value)
    check(nvrtc.nvrtcGetPTX(program, ptx), "nvrtcGetPTX")
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    return ptx.value


def main():
    source = SOURCE.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        libnvrtc = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else fetch_nvrtc(pathlib.Path(tmp))
        ptx = compile_ptx(libnvrtc, source)
    header = f"// kernels.cu fnv1a64 {fnv1a64(source):016x}: made by scripts/kernels-ptx.py\n"
    OUTPUT.write_bytes(header.encode() + ptx)
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({len(ptx)} bytes of PTX)")


if __name__ == "__main__":
    main()
