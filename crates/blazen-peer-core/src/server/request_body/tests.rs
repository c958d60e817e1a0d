use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::noop_waker_ref;
use hyper::body::{Body, Bytes, Frame};
use tonic::Code;

use super::{BoundedBody, RequestBudget};

const MIB: usize = 1024 * 1024;

/// What a scripted body yields at each poll.
enum Step {
    Data(&'static [u8]),
    Owned(Vec<u8>),
    Pending,
}

/// A request body that plays a script, then ends.
struct Script(VecDeque<Step>);

impl Body for Script {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.0.pop_front() {
            Some(Step::Data(bytes)) => {
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(bytes)))))
            }
            Some(Step::Owned(bytes)) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(bytes))))),
            Some(Step::Pending) => Poll::Pending,
            None => Poll::Ready(None),
        }
    }
}

fn budget(limit: usize) -> Arc<RequestBudget> {
    Arc::new(RequestBudget::new(
        "node-t".into(),
        limit,
        Duration::from_secs(30),
        64 * MIB,
    ))
}

fn header(len: u32) -> Vec<u8> {
    let mut header = vec![0];
    header.extend_from_slice(&len.to_be_bytes());
    header
}

fn body(steps: Vec<Step>, budget: &Arc<RequestBudget>) -> BoundedBody<Script> {
    BoundedBody::new(Script(steps.into()), budget.clone(), None)
}

/// Polls once: Some(Ok(bytes)) for data, Some(Err(code)) for an error, None at
/// the end; panics on Pending (use `poll_pending` for that).
fn poll(body: &mut BoundedBody<Script>) -> Option<Result<Vec<u8>, Code>> {
    match poll_raw(body) {
        Poll::Ready(frame) => frame,
        Poll::Pending => panic!("the body is pending"),
    }
}

fn poll_raw(body: &mut BoundedBody<Script>) -> Poll<Option<Result<Vec<u8>, Code>>> {
    let mut cx = Context::from_waker(noop_waker_ref());
    Pin::new(body).poll_frame(&mut cx).map(|frame| {
        frame.map(|frame| match frame {
            Ok(frame) => Ok(frame.into_data().expect("a data frame").to_vec()),
            Err(err) => Err(tonic::Status::from_error(err).code()),
        })
    })
}

#[tokio::test]
async fn a_message_reaches_tonic_only_whole_and_unchanged() {
    let budget = budget(MIB);
    let mut message = header(10);
    message.extend_from_slice(b"0123456789");
    let mut body = body(
        vec![
            Step::Owned(message[..3].to_vec()),
            Step::Pending,
            Step::Owned(message[3..9].to_vec()),
            Step::Pending,
            Step::Owned(message[9..].to_vec()),
        ],
        &budget,
    );
    assert!(
        poll_raw(&mut body).is_pending(),
        "three header bytes are held back"
    );
    assert_eq!(budget.used(), 3);
    assert!(
        poll_raw(&mut body).is_pending(),
        "a partial message is held back"
    );
    assert_eq!(budget.used(), 9);
    let mut seen = Vec::new();
    while let Some(chunk) = poll(&mut body) {
        seen.extend(chunk.unwrap());
    }
    assert_eq!(seen, message);
    assert_eq!(
        budget.used(),
        0,
        "delivered bytes are given back once tonic polls again"
    );
}

#[tokio::test]
async fn a_declared_length_reserves_nothing_beyond_what_arrived() {
    let budget = budget(256 * MIB);
    let mut start = header(63 * MIB as u32);
    start.extend_from_slice(&[7; 1000]);
    let mut body = body(vec![Step::Owned(start), Step::Pending], &budget);
    assert!(
        poll_raw(&mut body).is_pending(),
        "tonic sees nothing of it yet"
    );
    assert_eq!(budget.used(), 1005, "only the bytes that arrived are held");
    drop(body);
    assert_eq!(budget.used(), 0, "a dropped body gives its bytes back");
}

#[tokio::test]
async fn several_messages_in_one_chunk_are_split_at_their_boundaries() {
    let budget = budget(MIB);
    let mut chunk = header(2);
    chunk.extend_from_slice(b"ab");
    chunk.extend(header(3));
    chunk.extend_from_slice(b"cde");
    chunk.extend(header(4));
    chunk.extend_from_slice(b"fg");
    let mut body = body(vec![Step::Owned(chunk), Step::Pending], &budget);
    let first = poll(&mut body).unwrap().unwrap();
    assert_eq!(first, [header(2), b"ab".to_vec()].concat());
    let second = poll(&mut body).unwrap().unwrap();
    assert_eq!(second, [header(3), b"cde".to_vec()].concat());
    assert!(
        poll_raw(&mut body).is_pending(),
        "the third message is incomplete"
    );
    assert_eq!(budget.used(), 5 + 2, "only the held bytes stay charged");
}

#[tokio::test]
async fn a_body_past_the_budget_is_refused_as_busy_and_gives_everything_back() {
    let budget = budget(64 * 1024);
    let other = self::budget(64 * 1024);
    let mut start = header(100_000);
    start.extend_from_slice(&[1; 40_000]);
    let mut first = body(vec![Step::Owned(start), Step::Pending], &budget);
    assert!(poll_raw(&mut first).is_pending());
    let mut second = body(
        vec![Step::Owned([header(30_000), vec![2; 30_000]].concat())],
        &budget,
    );
    assert_eq!(poll(&mut second), Some(Err(Code::ResourceExhausted)));
    assert_eq!(poll(&mut second), None);
    assert_eq!(budget.used(), 40_005, "the refused chunk was not kept");
    drop(first);
    assert_eq!(budget.used(), 0);
    assert_eq!(other.used(), 0, "budgets are per server");
}

#[test]
fn the_busy_refusal_says_nothing_ran_and_names_the_setting() {
    let budget = budget(2048);
    let mut body = body(vec![Step::Owned(vec![0; 4096])], &budget);
    let mut cx = Context::from_waker(noop_waker_ref());
    let Poll::Ready(Some(Err(err))) = Pin::new(&mut body).poll_frame(&mut cx) else {
        panic!("expected a refusal");
    };
    let status = tonic::Status::from_error(err);
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("max_buffered_request_bytes"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("nothing ran"),
        "{}",
        status.message()
    );
}

#[test]
fn an_oversized_declared_length_goes_straight_to_tonic() {
    let budget = budget(MIB);
    let mut start = header(65 * MIB as u32);
    start.extend_from_slice(b"xyz");
    let mut body = body(vec![Step::Owned(start.clone()), Step::Pending], &budget);
    assert_eq!(
        poll(&mut body),
        Some(Ok(start)),
        "tonic refuses it from the header"
    );
}

#[test]
fn a_truncated_message_is_handed_over_at_the_end_for_tonic_to_report() {
    let budget = budget(MIB);
    let mut body = body(vec![Step::Data(&[0, 0, 0, 0, 9, 1, 2])], &budget);
    assert_eq!(poll(&mut body), Some(Ok(vec![0, 0, 0, 0, 9, 1, 2])));
    assert_eq!(poll(&mut body), None);
    assert_eq!(budget.used(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_body_fails_after_the_timeout_and_frees_its_bytes() {
    let budget = Arc::new(RequestBudget::new(
        "node-t".into(),
        MIB,
        Duration::from_secs(30),
        64 * MIB,
    ));
    let mut start = header(1000);
    start.extend_from_slice(&[3; 100]);
    let steps = vec![
        Step::Owned(start),
        Step::Pending,
        Step::Pending,
        Step::Pending,
    ];
    let mut body = body(steps, &budget);
    assert!(poll_raw(&mut body).is_pending());
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(
        poll_raw(&mut body).is_pending(),
        "29 s of silence is still within the timeout"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(poll(&mut body), Some(Err(Code::DeadlineExceeded)));
    assert_eq!(poll(&mut body), None);
    drop(body);
    assert_eq!(budget.used(), 0);
}

#[tokio::test(start_paused = true)]
async fn each_arriving_chunk_restarts_the_stall_timeout() {
    let budget = budget(MIB);
    let mut steps = vec![Step::Owned(header(3))];
    for _ in 0..3 {
        steps.push(Step::Pending);
        steps.push(Step::Data(b"a"));
    }
    let mut body = body(steps, &budget);
    for _ in 0..2 {
        assert!(poll_raw(&mut body).is_pending());
        tokio::time::advance(Duration::from_secs(20)).await;
    }
    assert!(poll_raw(&mut body).is_pending());
    tokio::time::advance(Duration::from_secs(20)).await;
    let mut seen = Vec::new();
    while let Some(chunk) = poll(&mut body) {
        seen.extend(chunk.unwrap());
    }
    assert_eq!(seen, [header(3), b"aaa".to_vec()].concat());
}

// --- whole (HTTP/JSON) bodies ---

#[tokio::test]
async fn a_whole_body_is_read_and_charged_until_dropped() {
    let budget = budget(MIB);
    let steps = vec![Step::Data(b"{\"a\":"), Step::Data(b"1}")];
    let whole = super::collect_whole(Script(steps.into()), &budget, None, 100)
        .await
        .ok()
        .expect("read whole");
    assert_eq!(whole.bytes(), b"{\"a\":1}");
    assert_eq!(budget.used(), 7);
    drop(whole);
    assert_eq!(budget.used(), 0);
}

#[tokio::test]
async fn a_whole_body_over_its_limit_is_too_large_and_gives_its_bytes_back() {
    let budget = budget(MIB);
    let steps = vec![Step::Data(b"0123456789"), Step::Data(b"0123456789")];
    let result = super::collect_whole(Script(steps.into()), &budget, None, 15).await;
    assert!(matches!(result, Err(super::WholeBodyError::TooLarge)));
    assert_eq!(budget.used(), 0);
}

#[tokio::test]
async fn a_whole_body_past_the_budget_is_refused_as_busy() {
    let budget = budget(8);
    let steps = vec![Step::Data(b"0123456789")];
    match super::collect_whole(Script(steps.into()), &budget, None, 100).await {
        Err(super::WholeBodyError::Refused(status)) => {
            assert_eq!(status.code(), Code::ResourceExhausted);
        }
        _ => panic!("expected a busy refusal"),
    }
    assert_eq!(budget.used(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_whole_body_that_stalls_fails_after_the_body_timeout() {
    let budget = budget(MIB);
    let steps = vec![
        Step::Data(b"{"),
        Step::Pending,
        Step::Pending,
        Step::Pending,
    ];
    match super::collect_whole(Script(steps.into()), &budget, None, 100).await {
        Err(super::WholeBodyError::Stalled(status)) => {
            assert_eq!(status.code(), Code::DeadlineExceeded);
        }
        _ => panic!("expected a stall"),
    }
    assert_eq!(budget.used(), 0);
}
