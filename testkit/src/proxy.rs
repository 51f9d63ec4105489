//! A TCP proxy that a test can cut: every open connection through it is
//! closed at once and new ones are refused until it is restored. To the app
//! on the other side this is exactly a broker or database going away.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::AbortHandle,
};

pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: AbortHandle,
}

struct State {
    upstream: SocketAddr,
    up: AtomicBool,
    connections: Mutex<Vec<AbortHandle>>,
}

impl TcpProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream,
            up: AtomicBool::new(true),
            connections: Mutex::new(Vec::new()),
        });
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if !accept_state.up.load(Ordering::SeqCst) {
                    drop(client); // refused: closed straight away
                    continue;
                }
                let upstream = accept_state.upstream;
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let mut client = client;
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                let mut conns = accept_state.connections.lock().unwrap();
                conns.retain(|c| !c.is_finished());
                conns.push(task.abort_handle());
            }
        })
        .abort_handle();
        Self {
            addr,
            state,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.state.up.store(false, Ordering::SeqCst);
        for conn in self.state.connections.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.state.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Replaces the port of `url` (`scheme://user@host:port/...`) with `port`.
pub fn with_port(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    format!("{scheme}://{userinfo}{host}:{port}/{path}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_replaced() {
        assert_eq!(
            super::with_port("amqp://guest:guest@127.0.0.1:5672/v?heartbeat=5", 1234),
            "amqp://guest:guest@127.0.0.1:1234/v?heartbeat=5"
        );
        assert_eq!(
            super::with_port("postgres://postgres@127.0.0.1:5432/db", 99),
            "postgres://postgres@127.0.0.1:99/db"
        );
    }
}
