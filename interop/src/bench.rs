//! `blazen-interop bench ADDRESS STEP_ID CALLS IN_FLIGHT SECONDS`: the crate's
//! gRPC client timing calls of one echo step, for `benches/run_all.py`, which
//! sets it beside our client and the other baselines.
//!
//! Prints one JSON line: `{"samples_s": [...], "calls_per_s": F | null}`:
//! - `samples_s`: `CALLS` sequential calls through `BlazenPeerClient`, each
//!   timed, after a warm-up of a tenth as many (at least 10);
//! - `calls_per_s`: `IN_FLIGHT` calls outstanding at all times for `SECONDS`
//!   (null when `SECONDS` is 0), after half a second of warm-up. The crate's
//!   client takes `&mut self`, so it cannot have two calls in flight; each
//!   task runs what its `invoke_sub_workflow` runs (postcard-encode, one unary
//!   call of the generated client, postcard-decode) on a clone of one
//!   channel: one connection, as our client uses.
//!
//! Every call's input is `{"i": seq, "pad": 40 x "x"}` (the Python benches'
//! payload) and its result is checked against it: a wrong answer exits 1.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blazen_peer::client::BlazenPeerClient;
use blazen_peer::pb::blazen_peer_client::BlazenPeerClient as GrpcClient;
use blazen_peer::pb::PostcardRequest;
use blazen_peer::protocol::{SubWorkflowRequest, SubWorkflowResponse};
use serde_json::{json, Value};
use tonic::transport::Channel;

const WORKFLOW: &str = "bench";
/// The deadline every call carries, as the Python benches' calls do.
const TIMEOUT_SECS: u64 = 30;
const THROUGHPUT_WARM_UP: Duration = Duration::from_millis(500);

pub struct Settings {
    pub address: String,
    pub step_id: String,
    pub calls: usize,
    pub in_flight: usize,
    pub seconds: f64,
}

pub async fn run(settings: Settings) -> ExitCode {
    match measure(&settings).await {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("blazen-interop bench: {why}");
            ExitCode::FAILURE
        }
    }
}

async fn measure(settings: &Settings) -> Result<Value, String> {
    let mut client = BlazenPeerClient::connect(settings.address.clone(), "rust-bench")
        .await
        .map_err(|err| format!("cannot connect to {}: {err}", settings.address))?;
    let mut seq = 0u64;
    for _ in 0..(settings.calls / 10).max(10) {
        echo_once(&mut client, &settings.step_id, seq).await?;
        seq += 1;
    }
    let mut samples = Vec::with_capacity(settings.calls);
    for _ in 0..settings.calls {
        let started = Instant::now();
        echo_once(&mut client, &settings.step_id, seq).await?;
        samples.push(started.elapsed().as_secs_f64());
        seq += 1;
    }
    let calls_per_s = if settings.seconds > 0.0 {
        let channel = Channel::from_shared(settings.address.clone())
            .map_err(|err| format!("bad address {}: {err}", settings.address))?
            .connect()
            .await
            .map_err(|err| format!("cannot connect to {}: {err}", settings.address))?;
        let grpc = GrpcClient::new(channel);
        in_flight(&grpc, settings, THROUGHPUT_WARM_UP).await?;
        Some(in_flight(&grpc, settings, Duration::from_secs_f64(settings.seconds)).await?)
    } else {
        None
    };
    Ok(json!({"samples_s": samples, "calls_per_s": calls_per_s}))
}

fn payload(seq: u64) -> Value {
    json!({"i": seq, "pad": "x".repeat(40)})
}

fn request(step_id: &str, seq: u64) -> Result<(SubWorkflowRequest, Value), String> {
    let input = payload(seq);
    let request = SubWorkflowRequest::new(
        WORKFLOW,
        vec![step_id.to_owned()],
        &input,
        Some(TIMEOUT_SECS),
    )
        .map_err(|err| format!("cannot build a request: {err}"))?;
    Ok((request, input))
}

fn check(seq: u64, expected: &Value, response: &SubWorkflowResponse) -> Result<(), String> {
    if let Some(error) = &response.error {
        return Err(format!("call {seq} failed: {error}"));
    }
    let got = response
        .result_value()
        .map_err(|err| format!("call {seq}: the result is not JSON: {err}"))?;
    if got.as_ref() != Some(expected) {
        return Err(format!("call {seq} echoed {got:?}, expected {expected}"));
    }
    Ok(())
}

async fn echo_once(client: &mut BlazenPeerClient, step_id: &str, seq: u64) -> Result<(), String> {
    let (request, input) = request(step_id, seq)?;
    let response = client
        .invoke_sub_workflow(request)
        .await
        .map_err(|err| format!("call {seq} failed: {err}"))?;
    check(seq, &input, &response)
}

/// What `BlazenPeerClient::invoke_sub_workflow` does, on a shareable client.
async fn echo_shared(grpc: &mut GrpcClient<Channel>, step_id: &str, seq: u64) -> Result<(), String> {
    let (request, input) = request(step_id, seq)?;
    let payload =
        postcard::to_allocvec(&request).map_err(|err| format!("cannot encode: {err}"))?;
    let reply = grpc
        .invoke_sub_workflow(tonic::Request::new(PostcardRequest {
            postcard_payload: payload,
        }))
        .await
        .map_err(|status| format!("call {seq} failed: {status}"))?;
    let response: SubWorkflowResponse = postcard::from_bytes(&reply.into_inner().postcard_payload)
        .map_err(|err| format!("call {seq}: cannot decode the response: {err}"))?;
    check(seq, &input, &response)
}

/// Calls per second with `settings.in_flight` calls outstanding for `window`.
async fn in_flight(
    grpc: &GrpcClient<Channel>,
    settings: &Settings,
    window: Duration,
) -> Result<f64, String> {
    let next_seq = Arc::new(AtomicU64::new(1 << 32));
    let completed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + window;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..settings.in_flight {
        let mut grpc = grpc.clone();
        let step_id = settings.step_id.clone();
        let next_seq = Arc::clone(&next_seq);
        let completed = Arc::clone(&completed);
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                echo_shared(&mut grpc, &step_id, seq).await?;
                completed.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        });
    }
    while let Some(outcome) = tasks.join_next().await {
        outcome.map_err(|err| format!("a task failed: {err}"))??;
    }
    // The last calls end after the deadline: divide by the time they really took.
    Ok(completed.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
