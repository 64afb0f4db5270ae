"""vgpu: GPU requests from a guest to the host mediator over ivshmem shared memory.

A client takes its VM's slot (one client per VM at a time); the typed helpers take
NumPy arrays (converted to contiguous float32 only when they are not already) and
return new float32 arrays written straight from the shared arena.

In a guest ``vgpu.Client()`` finds the ivshmem device in sysfs; on the host (tests,
benchmarks) pass the region file, as the examples here do with ``region`` (the tests
run every one of them against the real mediator):

>>> import numpy as np, vgpu
>>> with vgpu.Client(region) as gpu:
...     total = gpu.vector_add(np.arange(4, dtype=np.float32), np.ones(4, dtype=np.float32))
>>> total
array([1., 2., 3., 4.], dtype=float32)

Pipelining: ``tag = gpu.submit(vgpu.Opcode.NOOP)`` then ``gpu.wait(tag)``.
Failures raise :class:`VgpuError` subclasses whose ``code`` is that of the C library
(positive: the mediator's error code, see :class:`ErrorCode`):

>>> with vgpu.Client(region) as gpu:
...     gpu.vector_add([1, 2], [1, 2, 3])
Traceback (most recent call last):
...
ValueError: invalid arguments: vector lengths 2 and 3
"""

import warnings as _warnings
from enum import IntEnum

import numpy as np

from ._vgpu import (
    Busy,
    Completion,
    MediatorUnavailable,
    NoDevice,
    RequestFailed,
    VgpuError,
    VgpuTimeout,
)
from ._vgpu import Client as _NativeClient

__all__ = [
    "Busy",
    "Client",
    "Completion",
    "ErrorCode",
    "MediatorUnavailable",
    "NoDevice",
    "Opcode",
    "RequestFailed",
    "VgpuError",
    "VgpuTimeout",
]


class Opcode(IntEnum):
    """Operations the mediator runs (docs/LAYOUT.md).

    >>> with vgpu.Client(region) as gpu:
    ...     gpu.wait(gpu.submit(vgpu.Opcode.SLEEP, args=(100, 0, 0))).ok
    True
    """

    NOOP = 1
    ECHO = 2
    SLEEP = 3
    VECTOR_ADD = 4
    SAXPY = 5
    DOT = 6
    MATMUL = 7


class ErrorCode(IntEnum):
    """The mediator's error codes (the ``error`` of a failed :class:`Completion`).

    >>> with vgpu.Client(region) as gpu:         # 1000 floats, no operands
    ...     done = gpu.wait(gpu.submit(vgpu.Opcode.VECTOR_ADD, args=(1000, 0, 0)))
    >>> done.ok, vgpu.ErrorCode(done.error)
    (False, <ErrorCode.BAD_SHAPE: 4>)
    """

    UNKNOWN_OPCODE = 1
    IDENTITY_MISMATCH = 2
    BAD_RANGE = 3
    BAD_SHAPE = 4
    OUTPUT_TOO_SMALL = 5
    QUOTA_EXCEEDED = 6
    EXECUTOR_FAILED = 7
    SHUTTING_DOWN = 8
    OVERLAPPING_RANGES = 9


def _request(opcode, args, input, output_len):
    """The native submit's leading arguments: ``input`` as bytes, ``args`` as ints (for
    a submission with input, or with arguments that are not a tuple)."""
    if input is not None:
        if isinstance(input, np.ndarray):
            input = np.ascontiguousarray(input).tobytes()
        else:
            input = bytes(input)
    a0, a1, a2 = args
    return int(opcode), (int(a0), int(a1), int(a2)), input, int(output_len)


def _f32(a, name):
    array = np.ascontiguousarray(a, dtype=np.float32)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, not of shape {array.shape}")
    return array


class Client:
    """A client of this VM's slot.

    ``region``: the region file (on the host), or None to find the ivshmem device in
    sysfs (in a guest). ``doorbell_socket``: on the host, stand in for QEMU on the VM's
    doorbell socket. ``timeout``: seconds the helpers wait. ``spin``: busy-poll while
    waiting (lowest latency, a core busy). ``wait_for_slot``: wait for another client of
    the VM to finish instead of raising :class:`Busy`.

    >>> gpu = vgpu.Client(region, timeout=5.0)
    >>> vgpu.Client(region)                       # one client per VM at a time
    Traceback (most recent call last):
    ...
    vgpu.Busy: slot in use by pid ... (one client per VM; pass --wait-slot to wait)
    >>> gpu.close()
    """

    def __init__(self, region=None, *, doorbell_socket=None, timeout=30.0, spin=False,
                 wait_for_slot=False):
        self._native = _NativeClient(
            None if region is None else str(region),
            doorbell_socket=None if doorbell_socket is None else str(doorbell_socket),
            timeout=timeout,
            spin=spin,
            wait_for_slot=wait_for_slot,
        )
        for warning in self._native.warnings:
            _warnings.warn(warning, RuntimeWarning, stacklevel=2)

    @property
    def warnings(self):
        """What the client found wrong but not fatal when it attached (each also issued
        as a :class:`RuntimeWarning`): the vgpu-stub and the region disagree about the
        identity, or the host sleeps on the VM's doorbell but this program cannot ring it.

        >>> with vgpu.Client(region) as gpu:
        ...     gpu.warnings
        []
        """
        return self._native.warnings

    @property
    def identity(self):
        """(vm_id, pool, priority) of the slot.

        >>> with vgpu.Client(region) as gpu:
        ...     gpu.identity
        (5, 'A', 1)
        """
        return self._native.identity

    @property
    def in_flight(self):
        """Requests submitted and not yet waited for.

        >>> with vgpu.Client(region) as gpu:
        ...     tag = gpu.submit(vgpu.Opcode.NOOP)
        ...     before = gpu.in_flight
        ...     _ = gpu.wait(tag)
        ...     before, gpu.in_flight
        (1, 0)
        """
        return self._native.in_flight

    def vector_add(self, a, b):
        """``a + b`` on the host, as a new float32 array.

        >>> with vgpu.Client(region) as gpu:
        ...     gpu.vector_add([1, 2, 3], np.full(3, 0.5))
        array([1.5, 2.5, 3.5], dtype=float32)
        """
        return self._native.vector_add(_f32(a, "a"), _f32(b, "b"))

    def saxpy(self, alpha, x, y):
        """``alpha * x + y`` on the host.

        >>> with vgpu.Client(region) as gpu:
        ...     gpu.saxpy(2, [1, 2], [0.5, 0.5])
        array([2.5, 4.5], dtype=float32)
        """
        return self._native.saxpy(float(alpha), _f32(x, "x"), _f32(y, "y"))

    def dot(self, x, y):
        """``sum(x * y)`` on the host.

        >>> with vgpu.Client(region) as gpu:
        ...     gpu.dot([1, 2, 3], [4, 5, 6])
        32.0
        """
        return self._native.dot(_f32(x, "x"), _f32(y, "y"))

    def matmul(self, a, b):
        """``a @ b`` for 2-D arrays (m×k and k×n) on the host; returns m×n float32.

        >>> with vgpu.Client(region) as gpu:
        ...     gpu.matmul([[1, 2], [3, 4]], [[5, 6], [7, 8]])
        array([[19., 22.],
               [43., 50.]], dtype=float32)
        """
        a = np.ascontiguousarray(a, dtype=np.float32)
        b = np.ascontiguousarray(b, dtype=np.float32)
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
            raise ValueError(f"matmul of shapes {a.shape} and {b.shape}")
        (m, k), n = a.shape, b.shape[1]
        return self._native.matmul(a.reshape(-1), b.reshape(-1), m, k, n).reshape(m, n)

    def echo(self, data):
        """Send ``data`` (bytes-like) and get it back.

        >>> with vgpu.Client(region) as gpu:
        ...     gpu.echo(b"hello, host")
        b'hello, host'
        """
        return self._native.echo(bytes(data))

    def sleep_us(self, us):
        """Occupy the pool for ``us`` microseconds.

        >>> import time
        >>> with vgpu.Client(region) as gpu:
        ...     start = time.monotonic()
        ...     gpu.sleep_us(2000)
        ...     time.monotonic() - start >= 0.002
        True
        """
        self._native.sleep_us(int(us))

    def noop(self, label="NOOP"):
        """A NOOP labelled ``label`` (shown in the mediator's log).

        >>> with vgpu.Client(region) as gpu:
        ...     gpu.noop("TEST_HIGH")
        """
        self._native.noop(label)

    def submit(self, opcode, args=(0, 0, 0), input=None, output_len=0, label=None):
        """Submit without waiting; returns the tag for :meth:`wait` and :meth:`poll`.

        ``input`` is bytes-like or a NumPy array (its bytes); ``output_len`` the bytes
        of answer to make room for.

        >>> with vgpu.Client(region) as gpu:
        ...     tags = [gpu.submit(vgpu.Opcode.ECHO, input=bytes([i]), output_len=1) for i in range(8)]
        ...     [gpu.wait(tag).output for tag in tags]
        [b'\\x00', b'\\x01', b'\\x02', b'\\x03', b'\\x04', b'\\x05', b'\\x06', b'\\x07']
        """
        if input is None and type(args) is tuple:
            # The common case, converted by the native side alone.
            return self._native.submit(opcode, args, None, output_len, label)
        return self._native.submit(*_request(opcode, args, input, output_len), label)

    def stage(self, opcode, args=(0, 0, 0), input=None, output_len=0, label=None):
        """Like :meth:`submit`, without making the request visible to the host yet.

        The requests staged since the last publication go out together (one index
        store, at most one doorbell) at the next :meth:`flush`, :meth:`submit`,
        :meth:`wait` or :meth:`poll`.

        >>> with vgpu.Client(region) as gpu:
        ...     tags = [gpu.stage(vgpu.Opcode.NOOP, label="BATCH") for _ in range(4)]
        ...     gpu.flush()
        ...     all(gpu.wait(tag).ok for tag in tags)
        True
        """
        if input is None and type(args) is tuple:
            return self._native.stage(opcode, args, None, output_len, label)
        return self._native.stage(*_request(opcode, args, input, output_len), label)

    def flush(self):
        """Publish the :meth:`stage`\ d requests (nothing if none is).

        >>> with vgpu.Client(region) as gpu:
        ...     tag = gpu.stage(vgpu.Opcode.NOOP)
        ...     gpu.flush()
        ...     gpu.wait(tag).ok
        True
        """
        self._native.flush()

    def wait(self, tag, timeout=None):
        """The :class:`Completion` of request ``tag``, waiting up to ``timeout`` s (None:
        the client's ``timeout``). When it raises (e.g. :class:`VgpuTimeout`), the
        request stays in flight: wait for it again, or :meth:`poll` it.

        >>> with vgpu.Client(region) as gpu:
        ...     done = gpu.wait(gpu.submit(vgpu.Opcode.SLEEP, args=(1000, 0, 0)), timeout=5)
        >>> done.ok, done.error, done.exec_ns >= 1_000_000
        (True, 0, True)
        """
        return self._native.wait(tag, timeout)

    def poll(self, tag):
        """The :class:`Completion` of request ``tag`` if it has arrived, else None.

        >>> with vgpu.Client(region) as gpu:
        ...     tag = gpu.submit(vgpu.Opcode.NOOP)
        ...     done = None
        ...     while done is None:
        ...         done = gpu.poll(tag)        # or do other work meanwhile
        >>> done.ok
        True
        """
        return self._native.poll(tag)

    def close(self):
        """Release the slot (also done when the client is collected).

        >>> gpu = vgpu.Client(region)
        >>> gpu.close()
        >>> gpu.noop()
        Traceback (most recent call last):
        ...
        vgpu.VgpuError: the client is closed
        """
        self._native.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
