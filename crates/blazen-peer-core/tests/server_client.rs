//! A real server and client over loopback: protocol, status codes and mapping.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blazen_peer_core::envelope::{
    self, DerefRequest, FailureKind, SubWorkflowRequest, SubWorkflowResponse, WorkflowFailure,
};
use blazen_peer_core::event::{BASE_EVENT, START_EVENT, STOP_EVENT};
use blazen_peer_core::pb::blazen_peer_client::BlazenPeerClient;
use blazen_peer_core::pb::PostcardRequest;
use blazen_peer_core::registry::StepOutput;
use blazen_peer_core::{CallOptions, StreamMessage, StreamedEvent, TraceContext};
use blazen_peer_core::{
    ClientConfig, Envelope, Event, EventTypes, JsonEvent, PeerClient, PeerError, PeerService,
    RunContext, RunningServer, ServerConfig, SessionRefRegistry, StateValue, Step, StepFailure,
    StepHandler, StepRegistry, ENVELOPE_VERSION,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

type StepResult = Result<StepOutput, StepFailure>;

// The closure-backed step handler (one copy, shared with the other Rust tests).
#[path = "support/fn_step.rs"]
mod fn_step;
use fn_step::FnStep;

fn register<F>(registry: &StepRegistry, id: &str, accepts: &[&str], f: F)
where
    F: Fn(RunContext, Event) -> BoxFuture<'static, StepResult> + Send + Sync + 'static,
{
    let step = Step::new(
        id,
        accepts.iter().map(|name| name.to_string()).collect(),
        Arc::new(FnStep(f)),
    );
    registry.register(step, false, |_| false).unwrap();
}

fn json_event(chain: &[&str], json: Vec<u8>) -> Event {
    Event {
        types: EventTypes::new(chain.iter().map(|name| name.to_string()).collect()),
        data: Arc::new(JsonEvent(json)),
    }
}

fn stop_with(result: serde_json::Value) -> Event {
    json_event(
        &[STOP_EVENT, BASE_EVENT],
        serde_json::to_vec(&serde_json::json!({ "result": result })).unwrap(),
    )
}

/// The steps every test server offers.
fn test_registry() -> Arc<StepRegistry> {
    let registry = Arc::new(StepRegistry::default());
    // Doubles `x`, records state, and reports where it ran.
    register(&registry, "b::double", &[START_EVENT], |ctx, event| {
        async move {
            let input: serde_json::Value =
                serde_json::from_slice(&event.as_json().expect("wire input is JSON").0).unwrap();
            let x = input["x"].as_i64().unwrap_or(0);
            ctx.set("k", StateValue::Json(b"42".to_vec()));
            ctx.set("_hidden", StateValue::Json(b"\"secret\"".to_vec()));
            ctx.set("opaque", StateValue::Opaque(Arc::new(5_u8)));
            Ok(vec![stop_with(serde_json::json!({
                "doubled": x * 2,
                "node": ctx.node_id(),
                "workflow": ctx.workflow_name(),
            }))])
        }
        .boxed()
    });
    register(&registry, "b::fail", &[START_EVENT], |_ctx, _event| {
        async move { Err(StepFailure::new("ValueError", "refusing on purpose")) }.boxed()
    });
    register(&registry, "b::sleep", &[START_EVENT], |_ctx, _event| {
        async move {
            futures::future::pending::<()>().await;
            Ok(vec![])
        }
        .boxed()
    });
    // Writes `{"i": 0}` .. `{"i": n-1}` to the run's event stream, then stops with `n`.
    // Answers with the W3C trace context its call carried.
    register(&registry, "b::trace", &[START_EVENT], |ctx, _event| {
        async move {
            let trace = ctx.caller().and_then(|caller| caller.trace.clone());
            Ok(vec![stop_with(serde_json::json!({
                "traceparent": trace.as_ref().map(|trace| trace.traceparent.clone()),
                "tracestate": trace.and_then(|trace| trace.tracestate),
            }))])
        }
        .boxed()
    });
    register(&registry, "b::count", &[START_EVENT], |ctx, event| {
        async move {
            let input: serde_json::Value =
                serde_json::from_slice(&event.as_json().expect("wire input is JSON").0).unwrap();
            let n = input["n"].as_u64().unwrap();
            if let Some(events) = ctx.event_stream() {
                for i in 0..n {
                    events.push(StreamedEvent {
                        event_type: "b.Tick".into(),
                        data_json: format!(r#"{{"i":{i}}}"#).into_bytes(),
                    });
                }
            }
            Ok(vec![stop_with(serde_json::json!(n))])
        }
        .boxed()
    });
    registry
        .register_workflow("declared", vec!["b::double".into()])
        .unwrap();
    registry
}

const REGISTERED: [&str; 5] = ["b::count", "b::double", "b::fail", "b::sleep", "b::trace"];

struct Harness {
    server: RunningServer,
    address: String,
    refs: Arc<SessionRefRegistry>,
}

async fn start_server() -> Harness {
    let refs = Arc::new(SessionRefRegistry::default());
    let config = ServerConfig {
        registry: test_registry(),
        session_refs: refs.clone(),
        ..Default::default()
    };
    let server = RunningServer::start(
        PeerService::new("node-b", config),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let addr: SocketAddr = server.local_addr();
    assert_ne!(addr.port(), 0);
    Harness {
        address: format!("http://{addr}"),
        server,
        refs,
    }
}

impl Harness {
    async fn client(&self) -> PeerClient {
        PeerClient::connect(&self.address, "node-a", ClientConfig::default())
            .await
            .unwrap()
    }

    async fn raw(&self) -> BlazenPeerClient<Channel> {
        BlazenPeerClient::connect(self.address.clone())
            .await
            .unwrap()
    }
}

fn run_request(steps: &[&str], input: &str) -> Envelope<SubWorkflowRequest> {
    envelope::request(
        "wf",
        steps.iter().map(|id| id.to_string()).collect(),
        input.as_bytes().to_vec(),
        Some(10),
    )
}

fn result_value(response: &SubWorkflowResponse) -> serde_json::Value {
    serde_json::from_slice(response.result_json.as_ref().expect("result_json")).unwrap()
}

async fn raw_invoke(raw: &mut BlazenPeerClient<Channel>, payload: Vec<u8>) -> tonic::Status {
    raw.invoke_sub_workflow(PostcardRequest {
        postcard_payload: payload.into(),
    })
    .await
    .expect_err("the server should refuse this payload")
}

/// A successful call, to prove the server still serves after a refusal.
async fn assert_serves(client: &PeerClient) {
    let response = client
        .invoke(&run_request(&["b::double"], r#"{"x":5}"#))
        .await
        .unwrap();
    assert_eq!(response.body.error, None);
    assert_eq!(result_value(&response.body)["doubled"], 10);
}

// ---------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------

#[tokio::test]
async fn successful_run_returns_result_and_exported_state() {
    let mut harness = start_server().await;
    let client = harness.client().await;
    assert_eq!(client.address(), harness.address);
    assert_eq!(client.node_id(), "node-a");

    let response = client
        .invoke(&run_request(&["b::double"], r#"{"x":21}"#))
        .await
        .unwrap();
    let body = &response.body;
    assert_eq!(body.envelope_version, ENVELOPE_VERSION);
    assert_eq!(body.error, None);
    assert_eq!(
        result_value(body),
        serde_json::json!({"doubled": 42, "node": "node-b", "workflow": "wf"})
    );
    // Only the public JSON key is exported: not `_hidden`, not the opaque value.
    let state: Vec<(&str, &[u8])> = body
        .state_json
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_slice()))
        .collect();
    assert_eq!(state, vec![("k", &b"42"[..])]);
    assert!(body.remote_refs.is_empty());
    assert!(response.extensions.is_empty());
    assert_eq!(response.extensions.get::<WorkflowFailure>(), None);

    harness.server.stop(None).await.unwrap();
}

#[tokio::test]
async fn unknown_step_is_not_found_with_the_registered_ids() {
    let harness = start_server().await;
    let client = harness.client().await;
    let err = client
        .invoke(&run_request(&["b::double", "b::missing"], "{}"))
        .await
        .unwrap_err();
    match &err {
        PeerError::UnknownStep {
            step_id,
            registered,
            node,
        } => {
            assert_eq!(step_id, "b::missing");
            assert_eq!(registered, &REGISTERED.map(String::from).to_vec());
            assert_eq!(node, &harness.address);
        }
        other => panic!("expected UnknownStep, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "step `b::missing` is not registered on peer {}; registered steps: [b::count, b::double, \
             b::fail, b::sleep, b::trace]",
            harness.address
        )
    );

    // The raw status: NOT_FOUND naming the step and the registered ids.
    let mut raw = harness.raw().await;
    let status = raw_invoke(
        &mut raw,
        run_request(&["b::missing"], "{}").encode().unwrap(),
    )
    .await;
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        status.message(),
        "step `b::missing` is not registered on peer `node-b`; registered steps: [b::count, \
         b::double, b::fail, b::sleep, b::trace]"
    );
}

#[tokio::test]
async fn empty_step_ids_run_the_declared_workflow() {
    let harness = start_server().await;
    let client = harness.client().await;
    let request = envelope::request("declared", vec![], br#"{"x":4}"#.to_vec(), None);
    let response = client.invoke(&request).await.unwrap();
    assert_eq!(response.body.error, None);
    assert_eq!(
        result_value(&response.body),
        serde_json::json!({"doubled": 8, "node": "node-b", "workflow": "declared"})
    );
}

#[tokio::test]
async fn empty_step_ids_with_an_undeclared_workflow_is_unknown_workflow() {
    let harness = start_server().await;
    let client = harness.client().await;
    let request = envelope::request("nope", vec![], b"{}".to_vec(), None);
    let err = client.invoke(&request).await.unwrap_err();
    match err {
        PeerError::UnknownWorkflow {
            workflow_name,
            registered,
            node,
        } => {
            assert_eq!(workflow_name, "nope");
            assert_eq!(registered, vec!["declared".to_string()]);
            assert_eq!(node, harness.address);
        }
        other => panic!("expected UnknownWorkflow, got {other:?}"),
    }
}

#[tokio::test]
async fn failing_step_returns_ok_with_error_and_failure_extension() {
    let harness = start_server().await;
    let client = harness.client().await;
    let response = client
        .invoke(&run_request(&["b::fail"], "{}"))
        .await
        .unwrap();
    let expected = "step `b::fail` failed on node `node-b` handling `blazen::StartEvent`: \
                    ValueError: refusing on purpose; steps present: [`b::fail` (accepts \
                    blazen::StartEvent)]";
    assert_eq!(response.body.error.as_deref(), Some(expected));
    assert_eq!(response.body.result_json, None);
    assert!(response.body.state_json.is_empty());
    let failure = response.extensions.get::<WorkflowFailure>().unwrap();
    assert_eq!(failure.kind, FailureKind::StepFailed);
    assert_eq!(failure.message, expected);
    assert_eq!(failure.step_id.as_deref(), Some("b::fail"));
    assert_eq!(failure.remote_type.as_deref(), Some("ValueError"));
    assert_eq!(failure.node_id, "node-b");
}

#[tokio::test]
async fn run_past_its_timeout_reports_a_timeout_failure() {
    let harness = start_server().await;
    let client = harness.client().await;
    let request = envelope::request("wf", vec!["b::sleep".into()], b"{}".to_vec(), Some(1));
    let began = Instant::now();
    let response = client.invoke(&request).await.unwrap();
    let elapsed = began.elapsed();
    assert_eq!(
        response.body.error.as_deref(),
        Some("workflow `wf` did not finish within its 1s deadline on node `node-b`")
    );
    assert_eq!(response.body.result_json, None);
    let failure = response.extensions.get::<WorkflowFailure>().unwrap();
    assert_eq!(failure.kind, FailureKind::Timeout);
    assert_eq!(failure.node_id, "node-b");
    assert_eq!(failure.step_id, None);
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed < Duration::from_secs(5),
        "elapsed {elapsed:?}"
    );
    // And the server is still usable.
    assert_serves(&client).await;
}

#[tokio::test]
async fn huge_timeout_secs_from_a_raw_caller_is_served() {
    // The server side copes with any u64 deadline (tokio saturates it).
    let harness = start_server().await;
    let mut raw = harness.raw().await;
    for timeout_secs in [u64::MAX, 1_000_000_000_000] {
        let request = envelope::request(
            "wf",
            vec!["b::double".into()],
            br#"{"x":3}"#.to_vec(),
            Some(timeout_secs),
        );
        let reply = raw
            .invoke_sub_workflow(PostcardRequest {
                postcard_payload: request.encode().unwrap().into(),
            })
            .await
            .unwrap();
        let response =
            Envelope::<SubWorkflowResponse>::decode(&reply.into_inner().postcard_payload).unwrap();
        assert_eq!(response.body.error, None);
        assert_eq!(result_value(&response.body)["doubled"], 6);
    }
}

/// Fails: `PeerClient::invoke` panics for large `timeout_secs`. client.rs
/// computes `Duration::from_secs(secs) + self.config.deadline_margin`, which
/// overflows (panic "overflow when adding durations") for u64::MAX, and for
/// values above ~3.6e11 s tonic's grpc-timeout encoding panics
/// ("duration is unrealistically large").
#[tokio::test]
async fn huge_timeout_secs_does_not_panic_the_client() {
    let harness = start_server().await;
    let client = harness.client().await;
    for timeout_secs in [1_000_000_000_000, u64::MAX] {
        let client = client.clone();
        let outcome = tokio::spawn(async move {
            let request = envelope::request(
                "wf",
                vec!["b::double".into()],
                br#"{"x":3}"#.to_vec(),
                Some(timeout_secs),
            );
            client.invoke(&request).await
        })
        .await;
        match outcome {
            Ok(Ok(response)) => assert_eq!(result_value(&response.body)["doubled"], 6),
            Ok(Err(err)) => panic!("timeout_secs {timeout_secs}: unexpected error {err}"),
            Err(join) => panic!("timeout_secs {timeout_secs}: the client panicked: {join}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Protocol refusals
// ---------------------------------------------------------------------------

#[tokio::test]
async fn newer_envelope_version_is_failed_precondition() {
    let harness = start_server().await;
    let mut raw = harness.raw().await;
    // The first docs/wire.md vector with version 2.
    let payload = vec![
        0x02, 0x02, 0x77, 0x66, 0x01, 0x04, 0x61, 0x3a, 0x3a, 0x62, 0x07, 0x7b, 0x22, 0x78, 0x22,
        0x3a, 0x31, 0x7d, 0x01, 0x1e,
    ];
    let status = raw_invoke(&mut raw, payload).await;
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "envelope version 2 is newer than supported 1"
    );
    match PeerError::from_status(&status, &harness.address) {
        PeerError::EnvelopeVersion { got, supported } => assert_eq!((got, supported), (2, 1)),
        other => panic!("expected EnvelopeVersion, got {other:?}"),
    }

    // Same through PeerClient, with a request it was told to send as version 2.
    let client = harness.client().await;
    let mut request = run_request(&["b::double"], "{}");
    request.body.envelope_version = 2;
    match client.invoke(&request).await.unwrap_err() {
        PeerError::EnvelopeVersion { got, supported } => assert_eq!((got, supported), (2, 1)),
        other => panic!("expected EnvelopeVersion, got {other:?}"),
    }

    // Deref and release check the version too.
    let mut v2_ref = Envelope::new(DerefRequest {
        envelope_version: 2,
        ref_uuid: Uuid::nil(),
    })
    .encode()
    .unwrap();
    let status = raw
        .deref_session_ref(PostcardRequest {
            postcard_payload: v2_ref.clone().into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "envelope version 2 is newer than supported 1"
    );
    v2_ref[0] = 3;
    let status = raw
        .release_session_ref(PostcardRequest {
            postcard_payload: v2_ref.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "envelope version 3 is newer than supported 1"
    );

    assert_serves(&client).await;
}

#[tokio::test]
async fn version_zero_request_is_served() {
    let harness = start_server().await;
    let client = harness.client().await;
    let mut request = run_request(&["b::double"], r#"{"x":1}"#);
    request.body.envelope_version = 0;
    let response = client.invoke(&request).await.unwrap();
    assert_eq!(result_value(&response.body)["doubled"], 2);
}

#[tokio::test]
async fn invalid_json_input_is_invalid_argument() {
    let harness = start_server().await;
    let client = harness.client().await;
    let mut raw = harness.raw().await;
    let status = raw_invoke(
        &mut raw,
        run_request(&["b::double"], "{not json").encode().unwrap(),
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("input_json is not valid UTF-8 JSON: "),
        "{}",
        status.message()
    );
    // Not UTF-8 at all.
    let status = raw_invoke(
        &mut raw,
        envelope::request("wf", vec!["b::double".into()], vec![0xff, 0xfe], None)
            .encode()
            .unwrap(),
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument);

    match client
        .invoke(&run_request(&["b::double"], "[1,"))
        .await
        .unwrap_err()
    {
        PeerError::Encode(message) => {
            assert!(
                message.starts_with(&format!(
                    "peer {} rejected the payload: input_json is not valid UTF-8 JSON",
                    harness.address
                )),
                "{message}"
            );
        }
        other => panic!("expected Encode, got {other:?}"),
    }
    assert_serves(&client).await;
}

#[tokio::test]
async fn garbage_payloads_are_invalid_argument() {
    let harness = start_server().await;
    let client = harness.client().await;
    let mut raw = harness.raw().await;
    for payload in [
        vec![],
        vec![0x01],
        vec![0x01, 0xff, 0xff, 0xff, 0xff, 0x0f],
        vec![0x80],
        // Version 1, then text that is not a postcard request.
        [&[0x01][..], b"hello, not postcard"].concat(),
    ] {
        let status = raw_invoke(&mut raw, payload.clone()).await;
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "payload {payload:02x?}"
        );
        assert!(!status.message().is_empty());
    }
    let status = raw
        .deref_session_ref(PostcardRequest {
            postcard_payload: vec![0x01, 0x10, 0x00].into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_serves(&client).await;
}

/// Waits (polling, bounded) until `condition` holds.
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn streamed_events_arrive_in_order_then_the_response() {
    let harness = start_server().await;
    let client = harness.client().await;
    let mut receiver = client
        .stream(&run_request(&["b::count"], r#"{"n":3}"#))
        .await
        .unwrap();
    let mut events = Vec::new();
    let response = loop {
        match receiver.next().await.unwrap() {
            Some(StreamMessage::Event(event)) => events.push(event),
            Some(StreamMessage::Done(response)) => break response,
            None => panic!("the stream ended without the run's response"),
        }
    };
    let data: Vec<String> = events
        .iter()
        .map(|event| String::from_utf8(event.data_json.clone()).unwrap())
        .collect();
    assert_eq!(data, [r#"{"i":0}"#, r#"{"i":1}"#, r#"{"i":2}"#]);
    assert!(events.iter().all(|event| event.event_type == "b.Tick"));
    assert_eq!(
        response
            .body
            .result_json
            .as_ref()
            .map(|json| json.as_slice()),
        Some(&b"3"[..])
    );
    assert!(receiver.next().await.unwrap().is_none());
    assert_eq!(harness.server.stats().runs_succeeded, 1);
}

#[tokio::test]
async fn a_refused_stream_fails_at_the_call() {
    let harness = start_server().await;
    let client = harness.client().await;
    let err = client
        .stream(&run_request(&["b::missing"], "{}"))
        .await
        .err()
        .expect("an unknown step is refused");
    assert!(matches!(err, PeerError::UnknownStep { .. }), "{err:?}");
}

#[tokio::test]
async fn dropping_a_stream_cancels_its_run() {
    let harness = start_server().await;
    let client = harness.client().await;
    let receiver = client
        .stream(&run_request(&["b::sleep"], "{}"))
        .await
        .unwrap();
    wait_until("the run started", || {
        harness.server.stats().runs_in_flight == 1
    })
    .await;
    drop(receiver);
    wait_until("the run was cancelled", || {
        harness.server.stats().runs_cancelled == 1
    })
    .await;
    assert_eq!(harness.server.stats().runs_in_flight, 0);
    assert_serves(&client).await;
}

#[tokio::test]
async fn stop_drains_then_cancels_what_outlives_the_grace_period() {
    let mut harness = start_server().await;
    let client = harness.client().await;
    let long = tokio::spawn({
        let client = client.clone();
        async move { client.invoke(&run_request(&["b::sleep"], "{}")).await }
    });
    wait_until("the long run started", || {
        harness.server.stats().runs_in_flight == 1
    })
    .await;
    let channel = tonic::transport::Endpoint::from_shared(harness.address.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel);
    let status = |service: &str| {
        let mut health = health.clone();
        let service = service.to_owned();
        async move {
            health
                .check(HealthCheckRequest { service })
                .await
                .unwrap()
                .into_inner()
                .status()
        }
    };
    assert_eq!(status("").await, ServingStatus::Serving);
    assert_eq!(
        status("blazen.peer.v1.BlazenPeer").await,
        ServingStatus::Serving
    );

    let grace = Duration::from_millis(500);
    let started = Instant::now();
    let during_drain = async {
        while status("").await != ServingStatus::NotServing {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            status("blazen.peer.v1.BlazenPeer").await,
            ServingStatus::NotServing
        );
        // A new run is refused as unavailable: safe to retry elsewhere.
        match client.invoke(&run_request(&["b::double"], "{}")).await {
            Err(PeerError::Transport {
                message,
                code,
                started,
            }) => {
                assert_eq!(code, Some(Code::Unavailable as i32), "{message}");
                assert!(message.contains("shutting down"), "{message}");
                assert!(!started, "a refusal while draining never started the run");
            }
            other => panic!("expected a refusal while draining, got {other:?}"),
        }
    };
    let (stopped, ()) = tokio::join!(harness.server.stop(Some(grace)), during_drain);
    stopped.unwrap();
    assert!(started.elapsed() >= grace);
    let response = long.await.unwrap().unwrap();
    let failure = response.extensions.get::<WorkflowFailure>().unwrap();
    assert_eq!(failure.kind, FailureKind::Cancelled);
    assert!(failure.message.contains("shut down"), "{}", failure.message);
    drop(health);
    let stats = harness.server.stats();
    assert_eq!((stats.runs_cancelled, stats.runs_in_flight), (1, 0));
}

#[tokio::test]
async fn stop_lets_a_run_finish_within_the_grace_period() {
    let mut harness = start_server().await;
    let client = harness.client().await;
    let mut receiver = client
        .stream(&run_request(&["b::count"], r#"{"n":200}"#))
        .await
        .unwrap();
    // The run cannot finish until the stream is read; stop must wait for it.
    let read_all = async {
        let mut events = 0;
        loop {
            match receiver.next().await.unwrap() {
                Some(StreamMessage::Event(_)) => events += 1,
                Some(StreamMessage::Done(response)) => break (events, response),
                None => panic!("the stream ended without the run's response"),
            }
        }
    };
    let (stopped, (events, response)) =
        tokio::join!(harness.server.stop(Some(Duration::from_secs(30))), read_all);
    stopped.unwrap();
    assert_eq!(events, 200);
    assert_eq!(response.body.error, None);
    assert_eq!(harness.server.stats().runs_succeeded, 1);
}

// ---------------------------------------------------------------------------
// Session refs
// ---------------------------------------------------------------------------

#[tokio::test]
async fn deref_of_an_unknown_ref_is_not_found() {
    let harness = start_server().await;
    let key = Uuid::parse_str("12345678-9abc-def0-1234-56789abcdef0").unwrap();

    let mut raw = harness.raw().await;
    let status = raw
        .deref_session_ref(PostcardRequest {
            postcard_payload: Envelope::new(DerefRequest {
                envelope_version: ENVELOPE_VERSION,
                ref_uuid: key,
            })
            .encode()
            .unwrap()
            .into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        status.message(),
        "session ref 12345678-9abc-def0-1234-56789abcdef0 not found on node `node-b` (released, \
         expired, or never created here)"
    );

    let client = harness.client().await;
    let err = client.deref(key).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("12345678-9abc-def0-1234-56789abcdef0"),
        "{err}"
    );
}

/// Fails: `PeerClient::deref` turns the NOT_FOUND of an unknown session ref
/// into `PeerError::UnknownStep` (empty step id), because
/// `PeerError::from_status` maps every NOT_FOUND without step details to an
/// unknown step. Callers (and the Python binding) then report "step `` is not
/// registered on peer ...".
#[tokio::test]
async fn deref_of_an_unknown_ref_is_not_reported_as_an_unknown_step() {
    let harness = start_server().await;
    let client = harness.client().await;
    let err = client.deref(Uuid::new_v4()).await.unwrap_err();
    assert!(
        !matches!(err, PeerError::UnknownStep { .. }),
        "an unknown session ref is reported as an unknown step: {err:?} / {err}"
    );
    assert!(!err.to_string().contains("is not registered"), "{err}");
}

#[tokio::test]
async fn release_of_an_unknown_ref_is_false() {
    let harness = start_server().await;
    let client = harness.client().await;
    assert!(!client.release(Uuid::new_v4()).await.unwrap());
}

#[tokio::test]
async fn shared_session_ref_derefs_then_releases_once() {
    let harness = start_server().await;
    let client = harness.client().await;
    let key = harness
        .refs
        .insert_bytes(b"payload \x00\xff bytes".to_vec(), "bytes");
    assert_eq!(harness.refs.len(), 1);
    let descriptor = harness.refs.descriptor(&key, "node-b").unwrap();
    assert_eq!(descriptor.origin_node_id, "node-b");
    assert_eq!(descriptor.type_tag, "bytes");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        descriptor.created_at_epoch_ms <= now_ms
            && descriptor.created_at_epoch_ms + 60_000 > now_ms,
        "{descriptor:?}"
    );

    assert_eq!(client.deref(key).await.unwrap(), b"payload \x00\xff bytes");
    // Deref does not consume the ref.
    assert_eq!(client.deref(key).await.unwrap(), b"payload \x00\xff bytes");
    assert!(client.release(key).await.unwrap());
    assert!(harness.refs.is_empty());
    assert!(!client.release(key).await.unwrap());
    assert!(client.deref(key).await.is_err());
}

// ---------------------------------------------------------------------------
// Connection and lifecycle
// ---------------------------------------------------------------------------

#[tokio::test]
async fn connecting_to_a_closed_port_fails_fast_with_transport() {
    // Reserve a free port, then close it so nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let address = format!("http://{addr}");
    let began = Instant::now();
    let err = PeerClient::connect(&address, "node-a", ClientConfig::default())
        .await
        .err()
        .expect("nothing listens there");
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );
    match &err {
        PeerError::Transport {
            message,
            code,
            started,
        } => {
            assert!(
                message.starts_with(&format!("cannot connect to peer {address}: ")),
                "{message}"
            );
            assert_eq!(*code, None);
            assert!(!started);
        }
        other => panic!("expected Transport, got {other:?}"),
    }
    assert_eq!(err.kind(), "Transport");
}

#[tokio::test]
async fn invalid_address_or_node_id_is_a_validation_error() {
    match PeerClient::connect("not a uri", "node-a", ClientConfig::default()).await {
        Err(PeerError::Validation(message)) => assert!(message.contains("not a uri"), "{message}"),
        other => panic!("expected Validation, got {:?}", other.err()),
    }
    match PeerClient::connect("http://127.0.0.1:1", "node\n", ClientConfig::default()).await {
        Err(PeerError::Validation(message)) => assert!(message.contains("node_id"), "{message}"),
        other => panic!("expected Validation, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn stop_returns_ok_and_the_server_goes_away() {
    let mut harness = start_server().await;
    let client = harness.client().await;
    assert_serves(&client).await;

    tokio::time::timeout(Duration::from_secs(5), harness.server.stop(None))
        .await
        .expect("stop finishes promptly")
        .unwrap();
    // Stopping twice is harmless.
    harness.server.stop(None).await.unwrap();

    let err = PeerClient::connect(&harness.address, "node-a", ClientConfig::default())
        .await
        .err()
        .expect("the listener is closed after stop");
    assert!(matches!(err, PeerError::Transport { .. }), "{err:?}");

    // A call on the old connection cannot reach the peer: it never started,
    // so a pool may send it elsewhere.
    let err = client
        .invoke(&run_request(&["b::double"], "{}"))
        .await
        .expect_err("the peer is gone");
    assert!(err.is_not_started(), "{err:?}");
}

#[tokio::test]
async fn list_steps_names_every_step_and_workflow() {
    let mut harness = start_server().await;
    let client = harness.client().await;
    let listed = client.list_steps().await.unwrap();
    // No step here has limits and the server no labels: no extension block.
    assert!(listed.extensions.is_empty());
    let listed = listed.body;
    assert_eq!(listed.node_id, "node-b");
    let ids: Vec<&str> = listed.steps.iter().map(|step| step.id.as_str()).collect();
    assert_eq!(ids, REGISTERED);
    assert!(listed
        .steps
        .iter()
        .all(|step| step.accepts == vec![START_EVENT.to_string()]));
    assert_eq!(listed.workflows.len(), 1);
    assert_eq!(listed.workflows[0].name, "declared");
    assert_eq!(listed.workflows[0].step_ids, vec!["b::double".to_string()]);
    assert!(!listed.draining);
    assert_eq!(
        client.health("", None).await.unwrap(),
        blazen_peer_core::client::Health::Serving
    );
    harness.server.stop(Some(Duration::ZERO)).await.unwrap();
}

#[tokio::test]
async fn trace_context_travels_in_metadata_to_the_run() {
    let harness = start_server().await;
    let client = harness.client().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let options = CallOptions {
        trace: Some(TraceContext::new(traceparent, Some("vendor=1")).unwrap()),
    };
    let response = client
        .invoke_with(&run_request(&["b::trace"], "{}"), &options)
        .await
        .unwrap();
    assert_eq!(
        result_value(&response.body),
        serde_json::json!({"traceparent": traceparent, "tracestate": "vendor=1"})
    );
    // Without options the run sees no trace.
    let response = client
        .invoke(&run_request(&["b::trace"], "{}"))
        .await
        .unwrap();
    assert_eq!(
        result_value(&response.body),
        serde_json::json!({"traceparent": null, "tracestate": null})
    );
}
