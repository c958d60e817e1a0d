//! Session refs from Python: the registry, values kept without a copy, and the
//! sink that streams a remote value straight into a `bytes` object.

use std::any::Any;
use std::sync::Arc;

use blazen_peer_core::session_refs::DEFAULT_LEASE;
use blazen_peer_core::{
    ChunkSink, PeerError, RefLifetime, RefOwner, RefPayload, SessionRefRegistry,
};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use uuid::Uuid;

use crate::awaitable::ToPython;
use crate::errors::IntoPyResult;
use crate::gil;
use crate::records::{FetchedBytes, FetchedSize, RefRecord};
use crate::server::seconds;

/// A Python value and a contiguous buffer view of its bytes.
///
/// The view pins the exporting object, so its memory stays valid and can be
/// read from runtime threads without the GIL. Releasing it needs the GIL.
pub struct PyRefPayload {
    value: Py<PyAny>,
    view: Box<ffi::Py_buffer>,
}

// SAFETY: the view is only read (bytes) or released under the GIL (drop); the
// memory it points to is kept alive by the view's own reference.
unsafe impl Send for PyRefPayload {}
unsafe impl Sync for PyRefPayload {}

impl PyRefPayload {
    /// Views `payload` (anything with the buffer protocol, C-contiguous).
    pub(crate) fn new(value: Py<PyAny>, payload: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut view = Box::new(ffi::Py_buffer::new());
        // SAFETY: `view` is a valid, writable Py_buffer; on success it holds a
        // reference to the exporter until PyBuffer_Release.
        let status =
            unsafe { ffi::PyObject_GetBuffer(payload.as_ptr(), &mut *view, ffi::PyBUF_SIMPLE) };
        if status != 0 {
            return Err(PyErr::fetch(payload.py()));
        }
        Ok(Self { value, view })
    }

    /// The Python value this payload was inserted as.
    pub fn value(&self) -> &Py<PyAny> {
        &self.value
    }
}

impl RefPayload for PyRefPayload {
    fn bytes(&self) -> &[u8] {
        if self.view.buf.is_null() || self.view.len <= 0 {
            return &[];
        }
        // SAFETY: PyBUF_SIMPLE gives `len` contiguous bytes at `buf`, valid until release.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.view.len as usize) }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for PyRefPayload {
    fn drop(&mut self) {
        let view = &mut *self.view;
        // Past interpreter shutdown the exporter is gone with the process; leaking is right.
        gil::with_python(|_| unsafe { ffi::PyBuffer_Release(view) });
    }
}

pub fn parse_lifetime(name: &str) -> PyResult<RefLifetime> {
    match name {
        "UNTIL_CONTEXT_DROP" => Ok(RefLifetime::UntilContextDrop),
        "UNTIL_PARENT_FINISH" => Ok(RefLifetime::UntilParentFinish),
        "UNTIL_EXPLICIT_DROP" => Ok(RefLifetime::UntilExplicitDrop),
        other => Err(PeerError::Validation(format!(
            "unknown ref lifetime `{other}`; use RefLifetime.UNTIL_CONTEXT_DROP, \
             UNTIL_PARENT_FINISH or UNTIL_EXPLICIT_DROP"
        )))
        .py_err(),
    }
}

pub fn parse_key(key: &str) -> PyResult<Uuid> {
    Uuid::parse_str(key)
        .map_err(|err| {
            PeerError::Validation(format!("`{key}` is not a session ref key (a UUID): {err}"))
        })
        .py_err()
}

/// Stores `value` (viewed through `payload`) and returns its key.
pub fn insert(
    registry: &SessionRefRegistry,
    value: Py<PyAny>,
    payload: &Bound<'_, PyAny>,
    type_tag: String,
    lifetime: &str,
    owner: RefOwner,
) -> PyResult<String> {
    let lifetime = parse_lifetime(lifetime)?;
    let payload = PyRefPayload::new(value, payload)?;
    Ok(registry
        .insert(Arc::new(payload), type_tag, lifetime, owner)
        .to_string())
}

/// The Python value under `key`; a [`RefBuffer`] over the stored bytes when
/// the value came from elsewhere (an upload), for Python to decode by its tag.
pub fn get<'py>(
    py: Python<'py>,
    registry: &SessionRefRegistry,
    key: &str,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let key = parse_key(key)?;
    registry
        .get(&key)
        .map(
            |entry| match entry.payload.as_any().downcast_ref::<PyRefPayload>() {
                Some(payload) => Ok(payload.value().bind(py).clone()),
                None => Ok(Bound::new(
                    py,
                    RefBuffer {
                        payload: entry.payload.clone(),
                        type_tag: entry.type_tag.clone(),
                    },
                )?
                .into_any()),
            },
        )
        .transpose()
}

/// The bytes of a stored ref that no Python object holds (an upload), read
/// in place through the buffer protocol: `memoryview(buffer)` copies nothing,
/// and the view keeps the bytes alive after the ref is released.
#[pyclass(frozen, name = "RefBuffer", module = "blazen_peer._native")]
pub struct RefBuffer {
    payload: Arc<dyn RefPayload>,
    /// Codec name of the bytes.
    #[pyo3(get)]
    type_tag: String,
}

#[pymethods]
impl RefBuffer {
    fn __len__(&self) -> usize {
        self.payload.bytes().len()
    }

    /// A read-only view of the stored bytes; asking for a writable one raises BufferError.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: std::os::raw::c_int,
    ) -> PyResult<()> {
        let bytes = slf.get().payload.bytes();
        // SAFETY: `view` comes from the interpreter; FillInfo takes a new
        // reference to `slf`, which pins the payload (and so `bytes`) until
        // the view is released. Read-only: it refuses PyBUF_WRITABLE itself.
        let status = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                bytes.as_ptr() as *mut std::os::raw::c_void,
                bytes.len() as ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if status != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }
}

/// Session refs held by this process; share one between a server and local runs.
#[pyclass(frozen, name = "SessionRefRegistry", module = "blazen_peer._native")]
pub struct SessionRefRegistryRef {
    pub registry: Arc<SessionRefRegistry>,
}

#[pymethods]
impl SessionRefRegistryRef {
    #[new]
    #[pyo3(signature = (lease_secs=DEFAULT_LEASE.as_secs_f64()))]
    fn new(lease_secs: f64) -> PyResult<Self> {
        let lease = seconds("lease_secs", lease_secs)?;
        Ok(Self {
            registry: Arc::new(SessionRefRegistry::with_lease(lease)),
        })
    }

    fn __len__(&self) -> usize {
        self.registry.len()
    }

    /// Bytes held by live refs.
    #[getter]
    fn total_bytes(&self) -> usize {
        self.registry.total_bytes()
    }

    /// Lease of `UNTIL_PARENT_FINISH` refs, in seconds.
    #[getter]
    fn lease_secs(&self) -> f64 {
        self.registry.lease().as_secs_f64()
    }

    /// Every live ref, oldest first.
    fn list(&self) -> Vec<RefRecord> {
        self.registry
            .list()
            .into_iter()
            .map(RefRecord::from)
            .collect()
    }

    /// Stores a value with no owning run (it lives until removed, or per `lifetime`).
    fn insert(
        &self,
        value: Py<PyAny>,
        payload: &Bound<'_, PyAny>,
        type_tag: String,
        lifetime: &str,
    ) -> PyResult<String> {
        insert(
            &self.registry,
            value,
            payload,
            type_tag,
            lifetime,
            RefOwner::default(),
        )
    }

    /// The value under `key`, or None.
    fn get<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        get(py, &self.registry, key)
    }

    /// Drops the value under `key`; True when it was there.
    fn remove(&self, key: &str) -> PyResult<bool> {
        Ok(self.registry.remove(&parse_key(key)?))
    }
}

/// Streams a remote value into a `bytes` object allocated once at its final size.
#[derive(Default)]
pub struct BytesSink {
    bytes: Option<Py<PyAny>>,
    // Address of the bytes object's buffer; see `write`.
    data: usize,
    len: usize,
    pub type_tag: String,
}

impl ChunkSink for BytesSink {
    fn begin(&mut self, total_len: u64, type_tag: &str) -> Result<(), PeerError> {
        let len = isize::try_from(total_len).map_err(|_| {
            PeerError::Encode(format!(
                "a value of {total_len} bytes does not fit in memory here"
            ))
        })?;
        let allocated = gil::with_python(|py| {
            // SAFETY: a NULL source asks CPython for an uninitialised bytes object
            // of `len` bytes, which we fill before anyone else can see it.
            let raw = unsafe { ffi::PyBytes_FromStringAndSize(std::ptr::null(), len) };
            if raw.is_null() {
                return Err(PeerError::Encode(format!(
                    "cannot allocate {total_len} bytes for a session ref: {}",
                    PyErr::fetch(py)
                )));
            }
            // SAFETY: `raw` is a new, owned reference to a bytes object.
            let bytes = unsafe { Bound::from_owned_ptr(py, raw) };
            let data = unsafe { ffi::PyBytes_AsString(raw) } as usize;
            Ok((bytes.unbind(), data))
        })
        .unwrap_or_else(|| {
            Err(PeerError::Validation(
                "the Python interpreter is shutting down".into(),
            ))
        })?;
        self.bytes = Some(allocated.0);
        self.data = allocated.1;
        self.len = len as usize;
        self.type_tag = type_tag.to_owned();
        Ok(())
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), PeerError> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if self.bytes.is_none()
            || start
                .checked_add(bytes.len())
                .is_none_or(|end| end > self.len)
        {
            return Err(PeerError::Encode(format!(
                "a piece at {offset} of {} bytes falls outside the announced {} bytes",
                bytes.len(),
                self.len
            )));
        }
        // SAFETY: the destination lies inside the bytes object's buffer (checked
        // above), which we own and which no Python code has seen yet.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (self.data as *mut u8).add(start),
                bytes.len(),
            )
        };
        Ok(())
    }
}

/// A writable, contiguous view of a caller's buffer (bytearray, numpy array,
/// mmap...), held while a remote value streams into it. The export stops the
/// owner from resizing it meanwhile (bytearray raises BufferError).
pub struct BufferSink {
    view: Box<ffi::Py_buffer>,
    written: u64,
    pub type_tag: String,
}

// SAFETY: the view's memory is pinned by the view's own reference to its
// exporter; it is written only by the one task that owns the sink, and released
// under the GIL (drop).
unsafe impl Send for BufferSink {}

impl BufferSink {
    pub fn new(target: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut view = Box::new(ffi::Py_buffer::new());
        // SAFETY: `view` is a valid Py_buffer; on success it holds a reference
        // to the exporter until PyBuffer_Release.
        let status = unsafe {
            ffi::PyObject_GetBuffer(
                target.as_ptr(),
                &mut *view,
                ffi::PyBUF_SIMPLE | ffi::PyBUF_WRITABLE,
            )
        };
        if status != 0 {
            let cause = PyErr::fetch(target.py());
            return Err(PeerError::Validation(format!(
                "deref_session_ref_into needs a writable, contiguous buffer such as a \
                 bytearray, a numpy array or a writable memoryview; got {}: {cause}",
                target.get_type().name()?
            )))
            .py_err();
        }
        Ok(Self {
            view,
            written: 0,
            type_tag: String::new(),
        })
    }

    fn capacity(&self) -> u64 {
        self.view.len.max(0) as u64
    }

    /// How many bytes the value had.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl ChunkSink for BufferSink {
    fn begin(&mut self, total_len: u64, type_tag: &str) -> Result<(), PeerError> {
        if total_len > self.capacity() {
            return Err(PeerError::Validation(format!(
                "the session ref holds {total_len} bytes but the buffer has room for {}; \
                 pass a buffer of at least {total_len} bytes",
                self.capacity()
            )));
        }
        self.written = total_len;
        self.type_tag = type_tag.to_owned();
        Ok(())
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), PeerError> {
        let end = offset.checked_add(bytes.len() as u64);
        if end.is_none_or(|end| end > self.written) {
            return Err(PeerError::Encode(format!(
                "a piece at {offset} of {} bytes falls outside the announced {} bytes",
                bytes.len(),
                self.written
            )));
        }
        // SAFETY: the destination lies inside the writable view (checked above:
        // `written` never exceeds the view's length).
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (self.view.buf as *mut u8).add(offset as usize),
                bytes.len(),
            )
        };
        Ok(())
    }
}

impl Drop for BufferSink {
    fn drop(&mut self) {
        let view = &mut *self.view;
        // Past interpreter shutdown the exporter is gone with the process; leaking is right.
        gil::with_python(|_| unsafe { ffi::PyBuffer_Release(view) });
    }
}

/// A value fetched into a caller's buffer; Python reads it as a `FetchedSize`.
pub struct FetchedInto(pub BufferSink);

impl ToPython for FetchedInto {
    fn to_python(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        let record = FetchedSize {
            size: self.0.written(),
            type_tag: self.0.type_tag.clone(),
        };
        Ok(Bound::new(py, record)?.into_any())
    }
}

/// A fetched value; Python reads it as a `FetchedBytes`.
pub struct Fetched(pub BytesSink);

impl ToPython for Fetched {
    fn to_python(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        let data = match self.0.bytes {
            Some(bytes) => bytes.into_bound(py).cast_into::<PyBytes>()?.unbind(),
            None => PyBytes::new(py, b"").unbind(),
        };
        let record = FetchedBytes {
            type_tag: self.0.type_tag,
            data,
        };
        Ok(Bound::new(py, record)?.into_any())
    }
}
