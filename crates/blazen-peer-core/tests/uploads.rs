//! `PutSessionRef` over loopback: what is stored, how pieces are sized, the
//! upload bound, uploads cut off midway, and refs read while released.

use std::sync::Arc;
use std::time::{Duration, Instant};

use blazen_peer_core::client::{ChunkSink, PutOptions, VecSink};
use blazen_peer_core::envelope::{PutRefHeader, PutRefPiece, PutRefReady};
use blazen_peer_core::pb::blazen_peer_client::BlazenPeerClient;
use blazen_peer_core::piece::PostcardPiece;
use blazen_peer_core::{
    ClientConfig, Envelope, PeerClient, PeerError, PeerService, RefLifetime, RunningServer,
    ServerConfig, SessionRefRegistry, ENVELOPE_VERSION,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

struct Harness {
    _server: RunningServer,
    service: PeerService,
    address: String,
    refs: Arc<SessionRefRegistry>,
}

async fn start(max_upload_bytes: usize, max_message_bytes: usize) -> Harness {
    let refs = Arc::new(SessionRefRegistry::default());
    let config = ServerConfig {
        session_refs: refs.clone(),
        max_upload_bytes,
        max_message_bytes,
        ..Default::default()
    };
    let service = PeerService::new("node-b", config);
    let server = RunningServer::start(service.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    Harness {
        address: format!("http://{}", server.local_addr()),
        _server: server,
        service,
        refs,
    }
}

impl Harness {
    async fn client(&self, max_message_bytes: usize) -> PeerClient {
        let config = ClientConfig {
            max_message_bytes,
            ..ClientConfig::default()
        };
        PeerClient::connect(&self.address, "node-a", config)
            .await
            .unwrap()
    }
}

fn explicit() -> PutOptions {
    PutOptions {
        type_tag: "bytes".into(),
        lifetime: RefLifetime::UntilExplicitDrop,
        parent: None,
    }
}

fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn an_upload_in_small_pieces_is_stored_whole_under_the_returned_key() {
    let harness = start(1 << 20, 64 * 1024).await;
    // The client's limit is the smaller one: pieces of about 1 KiB, many of them.
    let client = harness.client(1024).await;
    let value = pattern(100_000);
    let (key, descriptor) = client
        .put_ref(Arc::new(value.clone()), explicit())
        .await
        .unwrap();
    assert_eq!(descriptor.origin_node_id, "node-b");
    assert_eq!(descriptor.type_tag, "bytes");
    let stored = harness.refs.get(&key).expect("stored");
    assert_eq!(stored.payload.bytes(), &value[..]);
    assert_eq!(stored.lifetime, RefLifetime::UntilExplicitDrop);
    assert_eq!(harness.service.uploads().bytes_held, 100_000);
    assert!(harness.refs.remove(&key));
    // A reader still holding the value holds its bytes too; they go back with it.
    assert_eq!(harness.service.uploads().bytes_held, 100_000);
    drop(stored);
    assert_eq!(harness.service.uploads().bytes_held, 0);
}

#[tokio::test]
async fn an_empty_upload_is_stored() {
    let harness = start(1 << 20, 64 * 1024).await;
    let client = harness.client(64 * 1024).await;
    let (key, _) = client
        .put_ref(Arc::new(Vec::new()), explicit())
        .await
        .unwrap();
    assert_eq!(harness.refs.get(&key).unwrap().payload.bytes().len(), 0);
}

/// Raw: the header, then whatever the test sends; returns the sender and the replies.
async fn raw_upload(
    harness: &Harness,
    header: PutRefHeader,
) -> (
    mpsc::Sender<PostcardPiece>,
    Result<tonic::Streaming<blazen_peer_core::pb::PostcardResponse>, tonic::Status>,
) {
    let mut raw = BlazenPeerClient::connect(harness.address.clone())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    let header = Envelope::new(header).encode().unwrap();
    tx.send(PostcardPiece::from(header)).await.unwrap();
    let replies = raw
        .put_session_ref(ReceiverStream::new(rx))
        .await
        .map(|reply| reply.into_inner());
    (tx, replies)
}

fn header(total_len: u64, max_message_bytes: u64) -> PutRefHeader {
    PutRefHeader {
        envelope_version: ENVELOPE_VERSION,
        total_len,
        type_tag: "bytes".into(),
        lifetime: "UNTIL_EXPLICIT_DROP".into(),
        parent_run_id: None,
        max_message_bytes,
    }
}

#[tokio::test]
async fn pieces_are_sized_to_the_smaller_limit_of_the_two_sides() {
    let harness = start(1 << 20, 64 * 1024).await;
    for (client_limit, fits) in [(2_000_u64, 2_000_usize), (10 << 20, 64 * 1024)] {
        let (_tx, replies) = raw_upload(&harness, header(10, client_limit)).await;
        let mut replies = replies.unwrap();
        let ready = replies.next().await.unwrap().unwrap();
        let ready = Envelope::<PutRefReady>::decode(&ready.postcard_payload)
            .unwrap()
            .body;
        assert!(
            ready.chunk_bytes > 0 && (ready.chunk_bytes as usize) < fits,
            "{ready:?}"
        );
    }
}

#[tokio::test]
async fn an_upload_past_the_bound_is_refused_before_any_piece() {
    let harness = start(100, 64 * 1024).await;
    let client = harness.client(64 * 1024).await;
    let err = client
        .put_ref(Arc::new(pattern(101)), explicit())
        .await
        .unwrap_err();
    assert!(matches!(err, PeerError::Quota(_)), "{err:?}");
    assert!(err.to_string().contains("max_upload_bytes of 100"), "{err}");
    assert!(err.is_not_started());
    assert_eq!(harness.service.uploads().bytes_held, 0);
    assert!(harness.refs.is_empty());
}

#[tokio::test]
async fn an_upload_cut_off_midway_stores_nothing_and_gives_its_bytes_back() {
    let harness = start(1 << 20, 64 * 1024).await;
    let (tx, replies) = raw_upload(&harness, header(10, 64 * 1024)).await;
    let mut replies = replies.unwrap();
    replies.next().await.unwrap().unwrap(); // PutRefReady
    let piece = PutRefPiece::encode(0, b"hello").unwrap();
    tx.send(PostcardPiece::from(piece)).await.unwrap();
    wait_until("the first piece arrived", || {
        harness.service.uploads().bytes_arriving == 5
    })
    .await;
    assert_eq!(harness.service.uploads().bytes_held, 10);
    drop(tx); // the client closes its side after 5 of 10 bytes
    let status = replies.next().await.unwrap().unwrap_err();
    assert!(
        status.message().contains("after 5 of its 10 bytes"),
        "{status:?}"
    );
    wait_until("the upload is over", || {
        harness.service.uploads().in_progress == 0
    })
    .await;
    assert_eq!(harness.service.uploads().bytes_held, 0);
    assert!(harness.refs.is_empty());
}

#[tokio::test]
async fn an_upload_for_a_parent_run_needs_one() {
    let harness = start(1 << 20, 64 * 1024).await;
    let client = harness.client(64 * 1024).await;
    let options = PutOptions {
        lifetime: RefLifetime::UntilParentFinish,
        ..explicit()
    };
    let err = client
        .put_ref(Arc::new(pattern(3)), options.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("parent run"), "{err}");
    let parent = Uuid::new_v4();
    let (key, _) = client
        .put_ref(
            Arc::new(pattern(3)),
            PutOptions {
                parent: Some(parent),
                ..options
            },
        )
        .await
        .unwrap();
    assert_eq!(client.finish_parent(parent).await.unwrap(), 1);
    assert!(harness.refs.get(&key).is_none());
}

/// Releases the ref on the server as soon as the first piece arrives here.
struct ReleasingSink {
    inner: VecSink,
    refs: Arc<SessionRefRegistry>,
    key: Uuid,
}

impl ChunkSink for ReleasingSink {
    fn begin(&mut self, total_len: u64, type_tag: &str) -> Result<(), PeerError> {
        self.inner.begin(total_len, type_tag)
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), PeerError> {
        if offset == 0 {
            assert!(self.refs.remove(&self.key), "released mid-read");
        }
        self.inner.write(offset, bytes)
    }
}

#[tokio::test]
async fn a_ref_released_while_it_is_read_is_read_to_its_end() {
    let harness = start(1 << 20, 64 * 1024).await;
    let client = harness.client(64 * 1024).await;
    let value = pattern(8 << 20);
    let key = harness.refs.insert_bytes(value.clone(), "bytes");
    let mut sink = ReleasingSink {
        inner: VecSink::default(),
        refs: harness.refs.clone(),
        key,
    };
    client.deref_into(key, &mut sink).await.unwrap();
    assert_eq!(sink.inner.bytes, value);
    assert!(harness.refs.get(&key).is_none());
}
