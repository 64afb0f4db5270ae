//! `vgpu._vgpu`: the native part of the Python package `vgpu` (see
//! `client-py/python/vgpu/__init__.py`, which wraps it with NumPy conversions and
//! docstrings, and `__init__.pyi` for the types).
//!
//! Operands are read from the caller's NumPy arrays straight into the shared arena, and
//! results are read from the arena straight into the NumPy array returned: one copy each
//! way, as for a Rust caller. The GIL is released while a call waits for an answer (not
//! to submit or poll, which never wait).
#![forbid(unsafe_code)]

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::path::PathBuf;
use std::time::Duration;
use vgpu_client::{Client as RustClient, ClientError, ClientOptions, Ticket, Tickets, Wait};
use vgpu_ring::Opcode;

create_exception!(
    vgpu,
    VgpuError,
    PyException,
    "A vgpu request or client failed; `code` says how (see vgpu.ErrorCode).

>>> try:
...     vgpu.Client('/nonexistent/region')
... except vgpu.VgpuError as e:
...     print(e.code, e)
-3 region: /nonexistent/region: No such file or directory (os error 2)
"
);
create_exception!(
    vgpu,
    RequestFailed,
    VgpuError,
    "The mediator answered with an error code (`code`, see vgpu.ErrorCode).

>>> with vgpu.Client(region) as gpu:
...     try:
...         gpu.sleep_us(2**32 - 1)
...     except vgpu.RequestFailed as e:
...         print(vgpu.ErrorCode(e.code).name, e)
BAD_SHAPE request failed: bad shape
"
);
create_exception!(
    vgpu,
    VgpuTimeout,
    VgpuError,
    "No answer in time.

>>> with vgpu.Client(region) as gpu:
...     tag = gpu.submit(vgpu.Opcode.SLEEP, args=(50_000, 0, 0))
...     try:
...         gpu.wait(tag, timeout=0.001)
...     except vgpu.VgpuTimeout as e:
...         print(e)
...     gpu.wait(tag).ok      # still in flight: it can be waited for again
no response within 1ms
True
"
);
create_exception!(
    vgpu,
    NoDevice,
    VgpuError,
    "No ivshmem device with a vgpu region was found (in a guest: is the VM's ivshmem
device attached?).

>>> try:
...     vgpu.Client()        # on a host: no ivshmem device in its sysfs
... except vgpu.NoDevice as e:
...     print(e.code)
-2
"
);
create_exception!(
    vgpu,
    MediatorUnavailable,
    VgpuError,
    "No mediator serves the region, or it stopped answering.

>>> def attach(path):
...     try:
...         return vgpu.Client(path)
...     except vgpu.MediatorUnavailable:
...         return None      # start vgpu-mediator on the host and try again
>>> gpu = attach(region)
>>> gpu.close()
"
);
create_exception!(
    vgpu,
    Busy,
    VgpuError,
    "No room: the ring or arena is full, or another client holds the slot.

>>> with vgpu.Client(region) as gpu:
...     try:
...         vgpu.Client(region)
...     except vgpu.Busy as e:
...         print(e.code)
-6
"
);

/// The Python exception for `e`, with its `code` attribute set (the C library's
/// number, [`ClientError::code`]).
fn raise(py: Python<'_>, e: &ClientError) -> PyErr {
    let message = e.to_string();
    let err = match e {
        ClientError::Failed(_) => RequestFailed::new_err(message),
        ClientError::Timeout(_) => VgpuTimeout::new_err(message),
        ClientError::NoDevice { .. } => NoDevice::new_err(message),
        ClientError::NoMediator | ClientError::MediatorDead(_) => {
            MediatorUnavailable::new_err(message)
        }
        ClientError::RingFull(_) | ClientError::ArenaFull(_) | ClientError::SlotInUse { .. } => {
            Busy::new_err(message)
        }
        ClientError::InvalidArgument(_) => pyo3::exceptions::PyValueError::new_err(message),
        _ => VgpuError::new_err(message),
    };
    // Best effort: an exception object always takes an attribute.
    let _ = err.value(py).setattr("code", e.code());
    err
}

/// An answered request.
///
/// >>> with vgpu.Client(region) as gpu:
/// ...     done = gpu.wait(gpu.submit(vgpu.Opcode.ECHO, input=b"hi", output_len=2))
/// >>> done.ok, done.status, done.error, done.output
/// (True, 1, 0, b'hi')
#[pyclass(module = "vgpu", frozen, get_all)]
struct Completion {
    /// The request's tag.
    tag: u32,
    /// 1: success, 2: error.
    status: u32,
    /// The mediator's error code (0 on success).
    error: u32,
    /// The bytes the mediator wrote to the output range.
    output: Py<PyBytes>,
    /// Nanoseconds the request waited in the pool's queue.
    queued_ns: u64,
    /// Nanoseconds it executed.
    exec_ns: u64,
}

#[pymethods]
impl Completion {
    /// Whether the request succeeded (status 1).
    #[getter]
    fn ok(&self) -> bool {
        self.status == vgpu_ring::Status::Success as u32
    }

    fn __repr__(&self) -> String {
        format!(
            "Completion(tag={}, status={}, error={}, queued_ns={}, exec_ns={})",
            self.tag, self.status, self.error, self.queued_ns, self.exec_ns
        )
    }
}

/// A client of the VM's slot (one per VM at a time).
///
/// Methods take the object exclusively (PyO3 refuses a second thread's concurrent call
/// with a RuntimeError rather than blocking); the mutex only makes the client `Sync`, as
/// a Python object must be, and is never locked (`get_mut`).
#[pyclass(module = "vgpu")]
struct Client {
    inner: std::sync::Mutex<Option<RustClient>>,
    tickets: Tickets,
}

impl Client {
    fn client(&mut self) -> PyResult<&mut RustClient> {
        // A poisoned mutex only means a panic elsewhere; the client is still consistent
        // between calls.
        let inner = self.inner.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.as_mut().ok_or_else(|| VgpuError::new_err("the client is closed"))
    }

    /// Run `f` on the client holding the GIL: for calls that never wait (submitting,
    /// polling), where releasing and taking the GIL again would cost more than the call.
    fn now<T>(
        &mut self,
        py: Python<'_>,
        f: impl FnOnce(&mut RustClient) -> Result<T, ClientError>,
    ) -> PyResult<T> {
        f(self.client()?).map_err(|e| raise(py, &e))
    }

    /// Run `f` on the client with the GIL released.
    fn run<T: Send>(
        &mut self,
        py: Python<'_>,
        f: impl FnOnce(&mut RustClient) -> Result<T, ClientError> + Send,
    ) -> PyResult<T> {
        let client = self.client()?;
        py.detach(|| f(client)).map_err(|e| raise(py, &e))
    }

    /// A new float32 array of `len` that `f` fills on the client (with the GIL
    /// released): the answer goes from the arena straight into it.
    fn fill_new_array<'py>(
        &mut self,
        py: Python<'py>,
        len: usize,
        f: impl FnOnce(&mut RustClient, &mut [f32]) -> Result<(), ClientError> + Send,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let array = PyArray1::<f32>::zeros(py, len, false);
        {
            let mut rw = array.readwrite();
            let out = rw.as_slice_mut()?;
            self.run(py, |c| f(c, out))?;
        }
        Ok(array)
    }
}

fn completion(py: Python<'_>, c: &vgpu_client::Completion) -> Completion {
    let r = &c.response;
    Completion {
        tag: r.tag,
        status: r.status,
        error: r.error,
        output: PyBytes::new(py, &c.output).unbind(),
        queued_ns: r.queued_ns,
        exec_ns: r.exec_ns,
    }
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (region=None, *, doorbell_socket=None, timeout=30.0, spin=false, wait_for_slot=false))]
    fn new(
        py: Python<'_>,
        region: Option<PathBuf>,
        doorbell_socket: Option<PathBuf>,
        timeout: f64,
        spin: bool,
        wait_for_slot: bool,
    ) -> PyResult<Self> {
        let timeout = Duration::try_from_secs_f64(timeout)
            .map_err(|_| pyo3::exceptions::PyValueError::new_err("timeout must be positive"))?;
        let options = ClientOptions {
            region,
            doorbell_socket,
            timeout,
            wait: if spin { Wait::Spin } else { Wait::default() },
            wait_for_slot,
            ..ClientOptions::default()
        };
        let client = py.detach(|| RustClient::attach(&options)).map_err(|e| raise(py, &e))?;
        Ok(Self { inner: std::sync::Mutex::new(Some(client)), tickets: Tickets::default() })
    }

    /// What the client found wrong but not fatal when it attached.
    #[getter]
    fn warnings(&mut self) -> PyResult<Vec<String>> {
        Ok(self.client()?.warnings().map(str::to_owned).collect())
    }

    /// (vm_id, pool, priority) of the slot.
    #[getter]
    fn identity(&mut self) -> PyResult<(u32, String, u8)> {
        let id = self.client()?.identity();
        Ok((id.vm_id, id.pool.name().to_string(), id.priority.get()))
    }

    fn vector_add<'py>(
        &mut self,
        py: Python<'py>,
        a: PyReadonlyArray1<'py, f32>,
        b: PyReadonlyArray1<'py, f32>,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let (a, b) = (a.as_slice()?, b.as_slice()?);
        self.fill_new_array(py, a.len(), |c, out| c.vector_add_into(a, b, out))
    }

    fn saxpy<'py>(
        &mut self,
        py: Python<'py>,
        alpha: f32,
        x: PyReadonlyArray1<'py, f32>,
        y: PyReadonlyArray1<'py, f32>,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let (x, y) = (x.as_slice()?, y.as_slice()?);
        self.fill_new_array(py, x.len(), |c, out| c.saxpy_into(alpha, x, y, out))
    }

    fn dot(
        &mut self,
        py: Python<'_>,
        x: PyReadonlyArray1<'_, f32>,
        y: PyReadonlyArray1<'_, f32>,
    ) -> PyResult<f32> {
        let (x, y) = (x.as_slice()?, y.as_slice()?);
        self.run(py, |c| c.dot(x, y))
    }

    /// `a` (m×k) times `b` (k×n), both flattened row-major; returns m×n flattened.
    fn matmul<'py>(
        &mut self,
        py: Python<'py>,
        a: PyReadonlyArray1<'py, f32>,
        b: PyReadonlyArray1<'py, f32>,
        m: u32,
        k: u32,
        n: u32,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let cells = usize::try_from(u64::from(m) * u64::from(n))
            .map_err(|_| pyo3::exceptions::PyValueError::new_err("m×n too large"))?;
        let (a, b) = (a.as_slice()?, b.as_slice()?);
        self.fill_new_array(py, cells, |c, out| c.matmul_into((a, b), (m, k, n), out))
    }

    fn echo<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let echoed = self.run(py, |c| c.echo(data))?;
        Ok(PyBytes::new(py, &echoed))
    }

    fn sleep_us(&mut self, py: Python<'_>, us: u32) -> PyResult<()> {
        self.run(py, |c| c.sleep_us(us))
    }

    #[pyo3(signature = (label="NOOP"))]
    fn noop(&mut self, py: Python<'_>, label: &str) -> PyResult<()> {
        self.run(py, |c| c.noop(label))
    }

    /// Submit without waiting; returns the request's tag.
    #[pyo3(signature = (opcode, args=(0, 0, 0), input=None, output_len=0, label=None))]
    fn submit(
        &mut self,
        py: Python<'_>,
        opcode: u16,
        args: (u32, u32, u32),
        input: Option<&[u8]>,
        output_len: u32,
        label: Option<&str>,
    ) -> PyResult<u32> {
        self.request(py, opcode, args, input, output_len, label, true)
    }

    /// Like submit, published only at the next flush, submit, wait or poll.
    #[pyo3(signature = (opcode, args=(0, 0, 0), input=None, output_len=0, label=None))]
    fn stage(
        &mut self,
        py: Python<'_>,
        opcode: u16,
        args: (u32, u32, u32),
        input: Option<&[u8]>,
        output_len: u32,
        label: Option<&str>,
    ) -> PyResult<u32> {
        self.request(py, opcode, args, input, output_len, label, false)
    }

    /// Publish the staged requests together.
    fn flush(&mut self) -> PyResult<()> {
        self.client()?.flush();
        Ok(())
    }

    /// Wait for request `tag` (timeout in seconds; None: the client's default); on a
    /// failure (e.g. a timeout) the request stays in flight.
    #[pyo3(signature = (tag, timeout=None))]
    fn wait(&mut self, py: Python<'_>, tag: u32, timeout: Option<f64>) -> PyResult<Completion> {
        let timeout = match timeout {
            Some(t) => Duration::try_from_secs_f64(t)
                .map_err(|_| pyo3::exceptions::PyValueError::new_err("timeout must be positive"))?,
            None => self.client()?.timeout(),
        };
        // An answer already there (a pipelining caller's usual case) is taken at once.
        if let Some(done) = self.poll(py, tag)? {
            return Ok(done);
        }
        let ticket = self.take(tag)?;
        let waited = self.run(py, |c| c.wait_answered(&ticket, timeout));
        // Kept when the wait fails too: the request can be waited for again.
        self.tickets.insert(ticket);
        waited?;
        self.poll(py, tag)?
            .ok_or_else(|| VgpuError::new_err(format!("request {tag} answered but not found")))
    }

    /// The completion of request `tag` if it has arrived, else None.
    fn poll(&mut self, py: Python<'_>, tag: u32) -> PyResult<Option<Completion>> {
        let ticket = self.take(tag)?;
        match self.now(py, |c| c.try_complete(ticket))? {
            Ok(done) => Ok(Some(completion(py, &done))),
            Err(ticket) => {
                self.tickets.insert(ticket);
                Ok(None)
            }
        }
    }

    /// Requests in flight.
    #[getter]
    fn in_flight(&mut self) -> PyResult<usize> {
        Ok(self.client()?.in_flight())
    }

    /// Release the slot (also when the object is collected).
    fn close(&mut self) {
        *self.inner.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        self.tickets.clear();
    }
}

impl Client {
    /// `submit` and `stage`: the request is published if `visible`.
    #[allow(clippy::too_many_arguments, reason = "submit's arguments and the flag")]
    fn request(
        &mut self,
        py: Python<'_>,
        opcode: u16,
        args: (u32, u32, u32),
        input: Option<&[u8]>,
        output_len: u32,
        label: Option<&str>,
        visible: bool,
    ) -> PyResult<u32> {
        let op = Opcode::try_from(opcode).map_err(|code| {
            pyo3::exceptions::PyValueError::new_err(format!("unknown opcode {code}"))
        })?;
        let call = vgpu_client::Call {
            op,
            label: label.unwrap_or(op.name()),
            args: [args.0, args.1, args.2],
            input: input.unwrap_or_default(),
            output_len,
        };
        let ticket = self.now(py, |c| if visible { c.submit(&call) } else { c.stage(&call) })?;
        let tag = ticket.tag();
        self.tickets.insert(ticket);
        Ok(tag)
    }

    fn take(&mut self, tag: u32) -> PyResult<Ticket> {
        self.tickets.remove(tag).ok_or_else(|| {
            pyo3::exceptions::PyKeyError::new_err(format!("tag {tag} is not in flight"))
        })
    }
}

#[pymodule]
fn _vgpu(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Client>()?;
    m.add_class::<Completion>()?;
    m.add("VgpuError", py.get_type::<VgpuError>())?;
    m.add("RequestFailed", py.get_type::<RequestFailed>())?;
    m.add("VgpuTimeout", py.get_type::<VgpuTimeout>())?;
    m.add("NoDevice", py.get_type::<NoDevice>())?;
    m.add("MediatorUnavailable", py.get_type::<MediatorUnavailable>())?;
    m.add("Busy", py.get_type::<Busy>())?;
    Ok(())
}
