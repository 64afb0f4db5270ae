from enum import IntEnum
from os import PathLike
from typing import List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

class VgpuError(Exception):
    code: int

class RequestFailed(VgpuError): ...
class VgpuTimeout(VgpuError): ...
class NoDevice(VgpuError): ...
class MediatorUnavailable(VgpuError): ...
class Busy(VgpuError): ...

class Opcode(IntEnum):
    NOOP = 1
    ECHO = 2
    SLEEP = 3
    VECTOR_ADD = 4
    SAXPY = 5
    DOT = 6
    MATMUL = 7

class ErrorCode(IntEnum):
    UNKNOWN_OPCODE = 1
    IDENTITY_MISMATCH = 2
    BAD_RANGE = 3
    BAD_SHAPE = 4
    OUTPUT_TOO_SMALL = 5
    QUOTA_EXCEEDED = 6
    EXECUTOR_FAILED = 7
    SHUTTING_DOWN = 8
    OVERLAPPING_RANGES = 9

class Completion:
    tag: int
    status: int
    error: int
    output: bytes
    queued_ns: int
    exec_ns: int
    @property
    def ok(self) -> bool: ...

_Floats = npt.ArrayLike

class Client:
    def __init__(
        self,
        region: Optional[Union[str, PathLike[str]]] = None,
        *,
        doorbell_socket: Optional[Union[str, PathLike[str]]] = None,
        timeout: float = 30.0,
        spin: bool = False,
        wait_for_slot: bool = False,
    ) -> None: ...
    @property
    def warnings(self) -> List[str]: ...
    @property
    def identity(self) -> Tuple[int, str, int]: ...
    @property
    def in_flight(self) -> int: ...
    def vector_add(self, a: _Floats, b: _Floats) -> npt.NDArray[np.float32]: ...
    def saxpy(self, alpha: float, x: _Floats, y: _Floats) -> npt.NDArray[np.float32]: ...
    def dot(self, x: _Floats, y: _Floats) -> float: ...
    def matmul(self, a: _Floats, b: _Floats) -> npt.NDArray[np.float32]: ...
    def echo(self, data: bytes) -> bytes: ...
    def sleep_us(self, us: int) -> None: ...
    def noop(self, label: str = "NOOP") -> None: ...
    def submit(
        self,
        opcode: int,
        args: Tuple[int, int, int] = (0, 0, 0),
        input: Optional[Union[bytes, bytearray, memoryview, np.ndarray]] = None,
        output_len: int = 0,
        label: Optional[str] = None,
    ) -> int: ...
    def stage(
        self,
        opcode: int,
        args: Tuple[int, int, int] = (0, 0, 0),
        input: Optional[Union[bytes, bytearray, memoryview, np.ndarray]] = None,
        output_len: int = 0,
        label: Optional[str] = None,
    ) -> int: ...
    def flush(self) -> None: ...
    def wait(self, tag: int, timeout: Optional[float] = None) -> Completion: ...
    def poll(self, tag: int) -> Optional[Completion]: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Client": ...
    def __exit__(self, *exc: object) -> bool: ...
