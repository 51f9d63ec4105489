//! The edge end to end: ZeroMQ requests and event feed, and the legacy TCP
//! gateways, against the real pipeline. The ZeroMQ peers are libzmq (the
//! `zmq` crate), a different implementation from the edge's own.

mod events;
mod follow;
mod gateways;
mod holds;
mod library;
mod requests;
mod task_control;

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bibliomq_core::config::Settings;
use bibliomq_testkit::{TestApp, TestEdge, TestEnv, app::DEADLINE};
use serde_json::Value;
use tokio::sync::mpsc;

/// One libzmq context for every test client (it owns libzmq's I/O threads).
fn context() -> &'static zmq::Context {
    static CONTEXT: OnceLock<zmq::Context> = OnceLock::new();
    CONTEXT.get_or_init(zmq::Context::new)
}

/// The API, one worker and the edge, all with settings adjusted by `tweak`.
async fn spawn_with_edge(tweak: impl Fn(&mut Settings)) -> (TestApp, TestEdge) {
    let app = TestApp::spawn(TestEnv::new().await, &tweak, 1).await;
    let mut settings = app.env.settings();
    tweak(&mut settings);
    let edge = TestEdge::start(settings).await;
    (app, edge)
}

/// One request from a fresh libzmq REQ socket: the reply and how long it
/// took, or why there was none within `timeout`.
async fn ask_within(
    endpoint: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(Value, Duration), String> {
    let endpoint = endpoint.to_owned();
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let socket = context().socket(zmq::REQ).map_err(|e| e.to_string())?;
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        socket.set_linger(0).map_err(|e| e.to_string())?;
        socket.set_sndtimeo(millis).map_err(|e| e.to_string())?;
        socket.set_rcvtimeo(millis).map_err(|e| e.to_string())?;
        socket.connect(&endpoint).map_err(|e| e.to_string())?;
        socket.send(body, 0).map_err(|e| format!("send: {e}"))?;
        let reply = socket
            .recv_bytes(0)
            .map_err(|e| format!("no reply within {timeout:?}: {e}"))?;
        assert!(
            !socket.get_rcvmore().unwrap(),
            "the reply has more than one frame"
        );
        let reply = serde_json::from_slice(&reply)
            .map_err(|e| format!("the reply is not JSON ({e}): {reply:?}"))?;
        Ok((reply, started.elapsed()))
    })
    .await
    .unwrap()
}

/// Sends raw bytes as a request and returns the reply; fails the test if
/// none comes within the deadline.
async fn ask_raw(endpoint: &str, body: impl Into<Vec<u8>>) -> Value {
    ask_within(endpoint, body.into(), DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .0
}

/// Sends a JSON request and returns the reply.
async fn ask(endpoint: &str, request: Value) -> Value {
    ask_raw(endpoint, request.to_string()).await
}

/// A libzmq SUB client on a thread of its own, handing over (topic, body)
/// pairs as they arrive. Stops when dropped.
struct Subscriber {
    events: mpsc::UnboundedReceiver<(String, Value)>,
    stop: Arc<AtomicBool>,
}

impl Subscriber {
    fn connect(endpoint: &str, prefix: &str) -> Self {
        let socket = context().socket(zmq::SUB).unwrap();
        socket.set_linger(0).unwrap();
        // Short receive timeouts only so the thread notices `stop`.
        socket.set_rcvtimeo(100).unwrap();
        socket.set_subscribe(prefix.as_bytes()).unwrap();
        socket.connect(endpoint).unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match socket.recv_multipart(0) {
                    Ok(frames) => {
                        assert_eq!(frames.len(), 2, "an event is topic + body: {frames:?}");
                        let topic = String::from_utf8(frames[0].clone()).unwrap();
                        let body = serde_json::from_slice(&frames[1]).unwrap();
                        if tx.send((topic, body)).is_err() {
                            return;
                        }
                    }
                    Err(zmq::Error::EAGAIN) => {}
                    Err(e) => panic!("SUB receive failed: {e}"),
                }
            }
        });
        Self { events, stop }
    }

    /// The next event for which `wanted` holds, waiting at most `within`.
    async fn next_where(
        &mut self,
        within: Duration,
        wanted: impl Fn(&str, &Value) -> bool,
    ) -> Option<(String, Value)> {
        let end = tokio::time::Instant::now() + within;
        loop {
            let (topic, body) = tokio::time::timeout_at(end, self.events.recv())
                .await
                .ok()
                .flatten()?;
            if wanted(&topic, &body) {
                return Some((topic, body));
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
