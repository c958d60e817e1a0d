//! Native half of `SubWorkflowStream`: the receiving end of a streaming run,
//! read one message per `next()`.

use std::sync::Arc;

use blazen_peer_core::{EventReceiver, PeerError, RunContext, StreamMessage};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use tokio::sync::Mutex;

use crate::awaitable::{self, ToPython};
use crate::client::{block_on, roll_up, ResponseRef};
use crate::errors::IntoPyResult;
use crate::runtime::{self, Owner};

/// The events of a streaming run, then its response.
#[pyclass(frozen, name = "EventStream", module = "blazen_peer._native")]
pub struct EventStreamRef {
    // None once closed; dropping the receiver cancels the call and the run.
    receiver: Arc<Mutex<Option<EventReceiver>>>,
    // The run of the step reading this stream, whose usage the sub-run's adds to.
    within_run: Option<RunContext>,
    owner: Owner,
}

impl EventStreamRef {
    pub fn new(receiver: EventReceiver, within_run: Option<RunContext>) -> Self {
        Self {
            receiver: Arc::new(Mutex::new(Some(receiver))),
            within_run,
            owner: Owner::here(),
        }
    }
}

/// One message as Python sees it.
enum Next {
    Event {
        event_type: String,
        data_json: Vec<u8>,
    },
    // Boxed: a response is far larger than an event, and most items are events.
    Done(Box<ResponseRef>),
    End,
}

impl ToPython for Next {
    fn to_python(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        Ok(match self {
            Next::Event {
                event_type,
                data_json,
            } => PyTuple::new(
                py,
                [
                    event_type.into_pyobject(py)?.into_any(),
                    PyBytes::new(py, &data_json).into_any(),
                ],
            )?
            .into_any(),
            Next::Done(response) => Bound::new(py, *response)?.into_any(),
            Next::End => py.None().into_bound(py),
        })
    }
}

/// The next message of the stream; ends it on the terminal response or a failure.
async fn next_of(
    receiver: Arc<Mutex<Option<EventReceiver>>>,
    within_run: Option<RunContext>,
) -> Result<Next, PeerError> {
    let mut guard = receiver.lock().await;
    let Some(stream) = guard.as_mut() else {
        return Ok(Next::End);
    };
    let address = stream.address().to_owned();
    let next = match stream.next().await {
        Ok(next) => next,
        Err(err) => {
            // A failed stream is over: free the call now, not at garbage collection.
            guard.take();
            return Err(err);
        }
    };
    Ok(match next {
        Some(StreamMessage::Event(event)) => Next::Event {
            event_type: event.event_type,
            data_json: event.data_json,
        },
        Some(StreamMessage::Done(response)) => {
            guard.take();
            roll_up(within_run.as_ref(), &response);
            Next::Done(Box::new(ResponseRef::from(response).at(address)))
        }
        None => Next::End,
    })
}

#[pymethods]
impl EventStreamRef {
    /// Resolves to `(type_name, data_json)` per event, then the run's
    /// `SubWorkflowResponse`, then None.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.owner.check("PeerClient stream").py_err()?;
        awaitable::spawn(py, next_of(self.receiver.clone(), self.within_run.clone()))
    }

    /// Blocking form of `next`.
    fn next_blocking<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.owner.check("PeerClient stream").py_err()?;
        block_on(py, next_of(self.receiver.clone(), self.within_run.clone()))?.to_python(py)
    }

    /// Cancels the call (and the run on the peer) unless it already ended. Idempotent.
    fn close(&self) -> PyResult<()> {
        self.owner.check("PeerClient stream").py_err()?;
        let receiver = self.receiver.clone();
        // A cancelled `next()` may still hold the lock until its task is dropped.
        runtime::runtime().py_err()?.spawn(async move {
            receiver.lock().await.take();
        });
        Ok(())
    }
}
