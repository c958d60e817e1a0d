//! The receiving end of a streaming run: [`EventReceiver`] yields the events
//! the run's steps write, then its response ([`StreamMessage`]).
//!
//! Items of a kind this build does not know (sent by a newer peer) are
//! skipped, so a peer can add kinds without breaking older clients.

use super::PeerClient;
use crate::envelope::{Envelope, StreamItem, SubWorkflowResponse};
use crate::error::PeerError;
use crate::event_stream::StreamedEvent;
use crate::pb::PostcardResponse;

/// What a streaming run sends.
#[derive(Debug)]
pub enum StreamMessage {
    /// An event a step wrote.
    Event(StreamedEvent),
    /// The run's response; the last message.
    Done(Envelope<SubWorkflowResponse>),
}

/// The receiving end of [`PeerClient::stream`]. Dropping it cancels the call,
/// and with it the run on the peer.
pub struct EventReceiver {
    pub(super) items: tonic::Streaming<PostcardResponse>,
    pub(super) client: PeerClient,
    pub(super) done: bool,
}

impl EventReceiver {
    /// The address of the peer running the stream.
    pub fn address(&self) -> &str {
        self.client.address()
    }

    /// The next message; None after [`StreamMessage::Done`].
    pub async fn next(&mut self) -> Result<Option<StreamMessage>, PeerError> {
        if self.done {
            return Ok(None);
        }
        loop {
            let item = self
                .items
                .message()
                .await
                .map_err(|status| {
                    self.client
                        .status_error(Some("StreamSubWorkflowEvents"), &status)
                })?
                .ok_or_else(|| {
                    PeerError::transport(format!(
                        "peer {} ended the event stream before the run's response",
                        self.client.address
                    ))
                })?;
            let item = self
                .client
                .decode::<StreamItem>(&item.postcard_payload)?
                .body;
            match item.kind {
                StreamItem::EVENT => {
                    return Ok(Some(StreamMessage::Event(StreamedEvent {
                        event_type: item.event_type,
                        data_json: item.payload,
                    })))
                }
                StreamItem::DONE => {
                    self.done = true;
                    let response = self.client.decode(&item.payload)?;
                    return Ok(Some(StreamMessage::Done(response)));
                }
                // A kind added by a newer peer: nothing this client can show.
                _ => continue,
            }
        }
    }
}
