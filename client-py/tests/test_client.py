"""The Python package against the real mediator."""

import struct

import numpy as np
import pytest

import vgpu


def test_helpers_take_and_return_numpy_arrays(region):
    with vgpu.Client(region) as gpu:
        assert gpu.identity == (5, "A", 1)
        assert gpu.warnings == []
        x = np.arange(3000, dtype=np.float32) % 97 * 0.25
        y = np.arange(3000, dtype=np.float32) % 31 - 15
        total = gpu.vector_add(x, y)
        assert total.dtype == np.float32 and total.shape == (3000,)
        np.testing.assert_array_equal(total, x + y)
        np.testing.assert_array_equal(gpu.saxpy(0.5, x, y), np.float32(0.5) * x + y)
        assert gpu.dot(x[:100], y[:100]) == pytest.approx(float(np.dot(x[:100], y[:100])), rel=1e-5)
        a = np.arange(15, dtype=np.float32).reshape(5, 3)
        b = (np.arange(6, dtype=np.float32) % 4).reshape(3, 2)
        np.testing.assert_array_equal(gpu.matmul(a, b), a @ b)
        assert gpu.echo(b"hello vgpu") == b"hello vgpu"
        gpu.sleep_us(100)
        gpu.noop("FROM_PYTHON")


def test_a_doorbell_it_cannot_ring_is_a_warning(region):
    # The host's word saying it sleeps on a doorbell for VM 5 (slot 0's control block
    # starts at 4096, the `doorbell` word at 268 in it: bit 31, peer 1, vector 0), as a
    # mediator with the doorbell holder publishes it; a client given only the region
    # file cannot ring it, and says so. It is still served (the VM is polled here).
    with open(region, "r+b") as f:
        f.seek(4096 + 268)
        f.write(struct.pack("<I", 0x8000_0000 | 1 << 16))
    with pytest.warns(RuntimeWarning, match="cannot ring it"):
        gpu = vgpu.Client(region)
    with gpu:
        assert len(gpu.warnings) == 1
        gpu.noop("WARNED")


def test_inputs_are_converted_only_when_needed(region):
    with vgpu.Client(region) as gpu:
        # float64 lists and strided views are converted; the answer is float32.
        np.testing.assert_array_equal(gpu.vector_add([1.0, 2.0], [3.0, 4.0]), [4.0, 6.0])
        strided = np.arange(20, dtype=np.float32)[::2]
        np.testing.assert_array_equal(gpu.vector_add(strided, strided), strided * 2)
        with pytest.raises(ValueError):
            gpu.vector_add(np.ones((2, 2)), np.ones((2, 2)))
        with pytest.raises(ValueError):
            gpu.vector_add(np.ones(3), np.ones(4))


def test_pipelining_with_submit_wait_and_poll(region):
    with vgpu.Client(region) as gpu:
        tags = [gpu.submit(vgpu.Opcode.NOOP, label="PIPELINED") for _ in range(16)]
        assert gpu.in_flight == 16
        done = [gpu.wait(tag, timeout=5) for tag in reversed(tags)]
        assert [c.tag for c in done] == list(reversed(tags))
        assert all(c.ok and c.status == 1 for c in done)
        data = np.arange(64, dtype=np.uint8)
        tag = gpu.submit(vgpu.Opcode.ECHO, input=data, output_len=64)
        completion = None
        while completion is None:
            completion = gpu.poll(tag)
        assert completion.output == data.tobytes()
        with pytest.raises(KeyError):
            gpu.wait(tag)


def test_a_staged_batch_is_published_by_flush(region):
    with vgpu.Client(region) as gpu:
        tags = [gpu.stage(vgpu.Opcode.NOOP, label="BATCH") for _ in range(8)]
        data = np.arange(16, dtype=np.uint8)
        tags.append(gpu.stage(vgpu.Opcode.ECHO, input=data, output_len=16))
        assert gpu.in_flight == 9
        gpu.flush()
        done = [gpu.wait(tag, timeout=5) for tag in tags]
        assert all(c.ok for c in done)
        assert done[-1].output == data.tobytes()


def test_errors_are_exceptions_with_codes(region):
    with vgpu.Client(region) as gpu:
        tag = gpu.submit(vgpu.Opcode.VECTOR_ADD, args=(1000, 0, 0), input=b"\0" * 16, output_len=16)
        refused = gpu.wait(tag)
        assert not refused.ok and refused.error == vgpu.ErrorCode.BAD_SHAPE
        with pytest.raises(vgpu.RequestFailed) as failed:
            gpu.sleep_us(4_000_000_000)  # longer than the mediator allows
        assert failed.value.code == vgpu.ErrorCode.BAD_SHAPE
        with pytest.raises(vgpu.Busy) as full:
            gpu.vector_add(np.ones(200_000, dtype=np.float32), np.ones(200_000, dtype=np.float32))
        assert full.value.code == -6 and "arena" in str(full.value)
        with pytest.raises(ValueError):
            gpu.matmul(np.ones((2, 3)), np.ones((2, 3)))
        with pytest.raises(vgpu.Busy) as busy:
            vgpu.Client(region)  # one client per VM
        assert busy.value.code == -6
    with pytest.raises(vgpu.VgpuError) as missing:
        vgpu.Client("/nonexistent/region")
    assert missing.value.code == -3
    closed = vgpu.Client(region)
    closed.close()
    with pytest.raises(vgpu.VgpuError):
        closed.noop()


def test_every_example_in_the_docs_runs(region):
    """The examples in the package's docstrings run against the real mediator (with
    ``region`` its region file), and every public class, method and property has one."""
    import doctest

    tests = doctest.DocTestFinder().find(vgpu, globs={"vgpu": vgpu, "np": np, "region": region})
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0
    documented = {test.name for test in tests if test.examples}
    public = {f"vgpu.{name}" for name in vgpu.__all__ if getattr(vgpu, name).__module__ == "vgpu"}
    public |= {f"vgpu.Client.{name}" for name in vars(vgpu.Client) if not name.startswith("_")}
    assert public | {"vgpu"} <= documented, sorted(public - documented)
