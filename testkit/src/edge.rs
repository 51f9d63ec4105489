//! The edge (ZeroMQ and TCP gateways) spawned in-process on free ports, and
//! a plain line client for the TCP gateways. The ZeroMQ peers live in the
//! tests themselves: libzmq, a different implementation from the edge's.

use std::net::SocketAddr;

use bibliomq_core::config::Settings;
use bibliomq_edge::{EdgeApp, EdgePorts};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::app::DEADLINE;

/// A running edge.
pub struct TestEdge {
    pub ports: EdgePorts,
    /// The edge's operations server (`/metrics`, `/healthz`, `/readyz`).
    pub ops: SocketAddr,
    stop: CancellationToken,
    join: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestEdge {
    /// Starts the edge with `settings`, every socket on a free port of 127.0.0.1.
    pub async fn start(settings: Settings) -> Self {
        let mut settings = settings;
        settings.edge.host = "127.0.0.1".to_owned();
        settings.edge.zmq_request_port = 0;
        settings.edge.zmq_pub_port = 0;
        settings.edge.ndjson_port = 0;
        settings.edge.pipe_port = 0;
        settings.edge.ops_port = 0;
        let app = EdgeApp::build(settings).await.unwrap();
        let ports = app.ports();
        let ops = app.ops_addr().unwrap();
        let stop = CancellationToken::new();
        let join = tokio::spawn(app.run_until_stopped(stop.clone()));
        Self {
            ports,
            ops,
            stop,
            join: Some(join),
        }
    }

    /// `tcp://127.0.0.1:<port>` of the ZeroMQ request (ROUTER) socket.
    pub fn request_endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.ports.zmq_request)
    }

    /// `tcp://127.0.0.1:<port>` of the ZeroMQ event (PUB) socket; panics
    /// when the edge does not serve it (auth on, no open feed).
    pub fn events_endpoint(&self) -> String {
        let port = self
            .ports
            .zmq_pub
            .expect("this edge serves no keyless event feed (auth on)");
        format!("tcp://127.0.0.1:{port}")
    }

    pub fn ndjson_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.ndjson))
    }

    pub fn pipe_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.pipe))
    }

    /// Asks for a graceful stop without waiting for it.
    pub fn begin_stop(&self) {
        self.stop.cancel();
    }

    /// Stops gracefully and waits until the edge has finished.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(join) = self.join.take() {
            crate::app::stopped(join, "the edge").await;
        }
    }
}

impl Drop for TestEdge {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A client of a line-oriented gateway.
pub struct LineClient {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl LineClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (read, write) = stream.into_split();
        Self {
            read: BufReader::new(read),
            write,
        }
    }

    /// Sends `line` and its newline.
    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes()).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.unwrap();
    }

    /// The next answer line (without its newline); fails the test if none
    /// comes within the deadline or the gateway closed the connection.
    pub async fn recv(&mut self) -> String {
        self.try_recv()
            .await
            .expect("the gateway closed the connection")
    }

    /// The next answer line, or `None` when the gateway closed the connection.
    pub async fn try_recv(&mut self) -> Option<String> {
        let mut line = String::new();
        let read = tokio::time::timeout(DEADLINE, self.read.read_line(&mut line))
            .await
            .expect("no answer line within the deadline")
            .unwrap();
        if read == 0 {
            return None;
        }
        assert!(line.ends_with('\n'), "an answer without newline: {line:?}");
        line.pop();
        Some(line)
    }

    /// Sends one line and reads one answer.
    pub async fn ask(&mut self, line: &str) -> String {
        self.send(line).await;
        self.recv().await
    }
}
