//! `blazen-interop`: the published Rust implementation of blazen.peer.v1
//! (crate `blazen-peer` 0.7.0), as a server and as a client, so the Python
//! tests can run it against this project in both directions.
//!
//!     blazen-interop serve [PORT]        # prints `LISTENING 127.0.0.1:PORT`, serves until stdin closes
//!     blazen-interop client ADDRESS      # runs every case against ADDRESS, one JSON line each
//!     blazen-interop http-client URL     # the same through the crate's HttpPeerClient (HTTP/JSON);
//!                                        # sends $BLAZEN_PEER_TOKEN when set
//!     blazen-interop bench ADDRESS STEP_ID CALLS IN_FLIGHT SECONDS
//!                                        # times the crate's client calling an echo step (bench.rs)
//!
//! The client exits 0 when every case passed, 1 when one failed, 2 on bad usage.

mod bench;
mod calls;
mod cases;
mod http_cases;
mod serve;
mod steps;

use std::process::ExitCode;

const USAGE: &str = "usage: blazen-interop serve [PORT] | blazen-interop client http://HOST:PORT \
                     | blazen-interop http-client http://HOST:PORT \
                     | blazen-interop bench http://HOST:PORT STEP_ID CALLS IN_FLIGHT SECONDS";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve"] => serve::run(0).await,
        ["serve", port] => match port.parse() {
            Ok(port) => serve::run(port).await,
            Err(_) => usage(&format!("`{port}` is not a port number")),
        },
        ["client", address] => cases::run(address).await,
        ["http-client", url] => {
            let token = std::env::var("BLAZEN_PEER_TOKEN")
                .ok()
                .filter(|token| !token.is_empty());
            http_cases::run(url, token).await
        }
        ["bench", address, step_id, calls, in_flight, seconds] => {
            let (Ok(calls), Ok(in_flight), Ok(seconds)) =
                (calls.parse(), in_flight.parse(), seconds.parse::<f64>())
            else {
                return usage("CALLS and IN_FLIGHT must be whole numbers, SECONDS a number");
            };
            if in_flight == 0 || !seconds.is_finite() || seconds < 0.0 {
                return usage("IN_FLIGHT must be positive and SECONDS at least 0");
            }
            bench::run(bench::Settings {
                address: (*address).to_owned(),
                step_id: (*step_id).to_owned(),
                calls,
                in_flight,
                seconds,
            })
            .await
        }
        _ => usage("expected a command"),
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("blazen-interop: {why}\n{USAGE}");
    ExitCode::from(2)
}
