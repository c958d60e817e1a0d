//! The response stream of `StreamSubWorkflowEvents`: the events steps write,
//! in order, then one DONE item with the run's response.
//!
//! The run is its own task, so a caller that reads slowly slows only the steps
//! that write (through the bounded [`EventStream`]), never the runner. tonic
//! polls this stream only when HTTP/2 flow control has room, which is what
//! makes a slow reader push back. Dropping the stream (the caller cancelled,
//! or its connection died) aborts the run task: the run ends as cancelled.

use std::sync::Arc;

use tokio::task::JoinHandle;
use tonic::Status;

use crate::envelope::{Envelope, StreamItem, SubWorkflowResponse};
use crate::error::PeerError;
use crate::event_stream::{EventStream, StreamedEvent};
use crate::pb::PostcardResponse;
use crate::session_refs::SessionRefRegistry;

pub(crate) type RunTask = JoinHandle<Result<Envelope<SubWorkflowResponse>, PeerError>>;

pub(crate) struct StreamFeed {
    events: EventStream,
    run: Option<RunTask>,
    finished: Option<Result<Envelope<SubWorkflowResponse>, PeerError>>,
    ended: bool,
    node_id: Arc<str>,
    max_message_bytes: usize,
    session_refs: Arc<SessionRefRegistry>,
}

impl StreamFeed {
    pub(crate) fn new(
        events: EventStream,
        run: RunTask,
        node_id: Arc<str>,
        max_message_bytes: usize,
        session_refs: Arc<SessionRefRegistry>,
    ) -> Self {
        Self {
            events,
            run: Some(run),
            finished: None,
            ended: false,
            node_id,
            max_message_bytes,
            session_refs,
        }
    }

    /// The stream tonic sends.
    pub(crate) fn into_stream(
        self,
    ) -> impl futures::Stream<Item = Result<PostcardResponse, Status>> + Send + 'static {
        futures::stream::unfold(self, |mut feed| async move {
            let item = feed.next_item().await?;
            Some((item, feed))
        })
    }

    async fn next_item(&mut self) -> Option<Result<PostcardResponse, Status>> {
        loop {
            // Events written before the run ended go out before its response.
            if let Some(event) = self.events.try_next() {
                return Some(self.event_item(event));
            }
            if let Some(outcome) = self.finished.take() {
                self.ended = true;
                return Some(self.done_item(outcome));
            }
            if self.ended {
                return None;
            }
            let run = self.run.as_mut()?;
            tokio::select! {
                biased;
                Some(event) = self.events.next() => return Some(self.event_item(event)),
                joined = run => {
                    self.run = None;
                    self.finished = Some(joined.unwrap_or_else(|join| {
                        Err(match join.try_into_panic() {
                            Ok(panic) => PeerError::from_panic(
                                panic.as_ref(),
                                "the peer, running this request,",
                            ),
                            Err(join) => PeerError::transport(format!("the run ended abnormally: {join}")),
                        })
                    }));
                }
            }
        }
    }

    fn event_item(&mut self, event: StreamedEvent) -> Result<PostcardResponse, Status> {
        let event_type = event.event_type.clone();
        let item = StreamItem::event(event.event_type, event.data_json);
        self.encode(item, || format!("event `{event_type}`"))
            .inspect_err(|_| self.stop())
    }

    fn done_item(
        &mut self,
        outcome: Result<Envelope<SubWorkflowResponse>, PeerError>,
    ) -> Result<PostcardResponse, Status> {
        let response = outcome.map_err(|err| err.to_status())?;
        let listed: Vec<_> = response.body.remote_refs.keys().copied().collect();
        StreamItem::done(&response)
            .map_err(|err| err.to_status())
            .and_then(|item| self.encode(item, || "the run's response".to_owned()))
            .inspect_err(|_| self.session_refs.drop_unlearned(&listed))
    }

    fn encode(
        &self,
        item: StreamItem,
        what: impl FnOnce() -> String,
    ) -> Result<PostcardResponse, Status> {
        let payload = Envelope::new(item)
            .encode()
            .map_err(|err| err.to_status())?;
        if payload.len() > self.max_message_bytes {
            return Err(PeerError::MessageTooLarge(format!(
                "{} of {} bytes exceeds max_message_bytes {} on peer `{}`; write smaller \
                 events, keep large values in session refs, or raise the limit on both sides",
                what(),
                payload.len(),
                self.max_message_bytes,
                self.node_id
            ))
            .to_status());
        }
        Ok(PostcardResponse {
            postcard_payload: payload.into(),
        })
    }

    /// Ends the stream after an error item: the run is cancelled.
    fn stop(&mut self) {
        if let Some(run) = self.run.take() {
            run.abort();
        }
        self.finished = None;
        self.ended = true;
    }
}

impl Drop for StreamFeed {
    fn drop(&mut self) {
        if let Some(run) = &self.run {
            run.abort();
        }
        self.events.close_reader();
    }
}
