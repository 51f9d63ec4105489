//! A line-oriented TCP server shared by the legacy gateways: one request per
//! line, one answer line per request, any number of lines per connection and
//! connections at once.
//!
//! - **Order.** A client may send lines without waiting (pipelining). Up to
//!   [`MAX_IN_FLIGHT`] lines of a connection run at once, and their answers
//!   are written in the order the lines arrived, so a client that matches
//!   answers by position works as well as one that matches by id.
//! - **Bad input.** Lines longer than [`MAX_LINE_BYTES`] and lines that are
//!   not UTF-8 are handed to the protocol as [`BadLine`], which answers with
//!   an error; the connection goes on. Blank lines are skipped.
//! - **Shutdown.** The listener stops accepting, each connection stops
//!   reading, writes the answers still due, and closes.
//! - **Keys.** With BIBLIOMQ_AUTH=on, a connection sends `AUTH <key>` as
//!   its first line, answered in the protocol's own shape; its lines then
//!   act for that key. A connection from an address on
//!   BIBLIOMQ_AUTH_GATEWAY_ALLOW (legacy clients that cannot send a key)
//!   acts with the `service` role without one; any other acts for nobody,
//!   and the command layer answers each of its lines `unauthorized`.

use std::{future::Future, net::SocketAddr, time::Duration};

use bibliomq_core::{auth::Caller, commands::Commands};
use futures::{StreamExt, stream::FuturesOrdered};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter},
    net::{TcpListener, TcpStream},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Longest line accepted, in bytes, without its newline.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Lines of one connection that run at once; reading waits beyond this, so a
/// client cannot queue unbounded work.
pub const MAX_IN_FLIGHT: usize = 64;
/// How much of a refused line is kept for the error answer (to find its id).
const BAD_LINE_HEAD: usize = 256;

/// A line that could not be taken as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub reason: BadReason,
    /// The start of the line (lossily decoded), for the protocol to find an id in.
    pub head: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadReason {
    TooLong,
    NotUtf8,
}

impl BadLine {
    pub fn message(&self) -> String {
        match self.reason {
            BadReason::TooLong => {
                format!("line longer than {MAX_LINE_BYTES} bytes; it was skipped")
            }
            BadReason::NotUtf8 => "line is not valid UTF-8".to_owned(),
        }
    }
}

/// A gateway's protocol: how one line is answered.
pub trait LineProtocol: Clone + Send + Sync + 'static {
    /// Name for the logs and the metrics.
    const NAME: &'static str;
    /// The task a line runs, as the metrics name it.
    const ACTION: &'static str;

    /// Whether an answer reports success (for the metrics).
    fn succeeded(answer: &str) -> bool;

    /// Where answered lines are counted.
    fn metrics(&self) -> &bibliomq_core::metrics::Metrics;

    /// The commands the lines run, acting for the connection's caller.
    fn commands(&self) -> &Commands;

    /// The same protocol, its lines run by `commands`.
    fn acting_as(&self, commands: Commands) -> Self;

    /// The answer line to an `AUTH <key>` line: who the key is, or why not.
    fn auth_answer(&self, outcome: Result<&Caller, crate::wire::WireError>) -> String;

    /// The answer line (without its newline) to `line`. Must always answer,
    /// within the protocol's own time limit.
    fn answer(
        &self,
        line: Result<String, BadLine>,
    ) -> impl Future<Output = String> + Send + 'static;
}

/// Accepts connections on `listener` until `shutdown`, then waits up to
/// `drain` for the connections to write their last answers.
pub async fn serve<P: LineProtocol>(
    listener: TcpListener,
    protocol: P,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                connections.spawn(connection(stream, peer, protocol.clone(), shutdown.clone()));
            }
            Err(e) => {
                // Usually out of file descriptors: wait a little instead of spinning.
                tracing::warn!(error = %e, gateway = P::NAME, "accept failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            gateway = P::NAME,
            "connections still answering at shutdown were abandoned"
        );
    }
}

async fn connection<P: LineProtocol>(
    stream: TcpStream,
    peer: SocketAddr,
    protocol: P,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let mut protocol = bind_caller(&protocol, peer);
    let (read, write) = stream.into_split();
    let mut lines = LineReader::new(BufReader::new(read), MAX_LINE_BYTES);
    let mut out = BufWriter::new(write);
    let mut pending = FuturesOrdered::new();
    let mut reading = true;
    tracing::debug!(%peer, gateway = P::NAME, "connection opened");
    loop {
        tokio::select! {
            // Answers first, so a fast client cannot starve its own replies.
            biased;
            Some(answer) = pending.next(), if !pending.is_empty() => {
                let answer: String = answer;
                // Flushed at once: the next answer may be long in coming.
                let written = async {
                    out.write_all(answer.as_bytes()).await?;
                    out.write_all(b"\n").await?;
                    out.flush().await
                };
                if let Err(e) = written.await {
                    tracing::debug!(%peer, error = %e, "client stopped reading");
                    return;
                }
            }
            () = shutdown.cancelled(), if reading => reading = false,
            line = lines.next_line(), if reading && pending.len() < MAX_IN_FLIGHT => match line {
                Ok(Some(Ok(line))) if auth_line(&line).is_some() => {
                    let key = auth_line(&line).unwrap_or_default();
                    let started = std::time::Instant::now();
                    let commands = protocol.commands().clone();
                    let (answer, outcome) = match commands.authenticate(Some(key)).await {
                        Ok(caller) => {
                            let answer = protocol.auth_answer(Ok(&caller));
                            protocol = protocol.acting_as(commands.acting_as(caller));
                            (answer, "ok")
                        }
                        Err(e) => {
                            // Explicit credentials that fail are not made up
                            // for by the source address.
                            let nobody = commands.acting_as_nobody();
                            let e = crate::wire::WireError::from(e);
                            let outcome = e.code;
                            let answer = protocol.auth_answer(Err(e));
                            protocol = protocol.acting_as(nobody);
                            (answer, outcome)
                        }
                    };
                    protocol.metrics().edge_request(P::NAME, "auth", outcome, started.elapsed());
                    pending.push_back(futures::future::Either::Left(std::future::ready(answer)));
                }
                Ok(Some(line)) => {
                    let answer = protocol.answer(line);
                    let metrics = protocol.metrics().clone();
                    pending.push_back(futures::future::Either::Right(async move {
                        let started = std::time::Instant::now();
                        let answer = answer.await;
                        let outcome = if P::succeeded(&answer) { "ok" } else { "error" };
                        metrics.edge_request(P::NAME, P::ACTION, outcome, started.elapsed());
                        answer
                    }));
                }
                Ok(None) => reading = false,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "reading failed");
                    reading = false;
                }
            },
            else => break,
        }
        if !reading && pending.is_empty() {
            break;
        }
    }
    let _ = out.flush().await;
    let _ = out.shutdown().await;
    tracing::debug!(%peer, gateway = P::NAME, "connection closed");
}

/// The key of an `AUTH <key>` line (the word in any case).
fn auth_line(line: &str) -> Option<&str> {
    let line = line.trim();
    let (word, key) = line.split_once(char::is_whitespace)?;
    word.eq_ignore_ascii_case("AUTH").then(|| key.trim())
}

/// Whom a new connection acts for before any `AUTH` line: anyone with
/// BIBLIOMQ_AUTH=off; with it on, the `service` role for an allowed source
/// address, nobody otherwise.
fn bind_caller<P: LineProtocol>(protocol: &P, peer: SocketAddr) -> P {
    let commands = protocol.commands();
    let auth = &commands.settings().auth;
    let bound = if !auth.enabled {
        commands.acting_as(Caller::open())
    } else if auth.gateway_allow.allows(peer.ip()) {
        commands.acting_as(Caller::address(peer.ip()))
    } else {
        commands.acting_as_nobody()
    };
    protocol.acting_as(bound)
}

/// Reads lines of at most `max` bytes. Cancel-safe: bytes taken from the
/// reader are kept in `self` before any await, so a `select!` that drops a
/// `next_line` future loses nothing.
pub struct LineReader<R> {
    inner: R,
    line: Vec<u8>,
    max: usize,
    /// Past `max` in the current line: skipping to its end.
    too_long: bool,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            line: Vec::new(),
            max,
            too_long: false,
        }
    }

    /// The next non-blank line (without `\n` or `\r\n`), or `None` at the end.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Result<String, BadLine>>> {
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                // End of input: a last line without a newline still counts.
                if self.line.is_empty() && !self.too_long {
                    return Ok(None);
                }
                return Ok(self.finish_line());
            }
            let (chunk, found_end) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (&available[..i], true),
                None => (available, false),
            };
            let taken = chunk.len() + usize::from(found_end);
            if !self.too_long {
                if self.line.len() + chunk.len() > self.max {
                    self.too_long = true;
                    let room = BAD_LINE_HEAD.saturating_sub(self.line.len());
                    self.line.extend_from_slice(&chunk[..room.min(chunk.len())]);
                    self.line.truncate(BAD_LINE_HEAD);
                } else {
                    self.line.extend_from_slice(chunk);
                }
            }
            self.inner.consume(taken);
            if found_end && let Some(line) = self.finish_line() {
                return Ok(Some(line));
            }
        }
    }

    /// Takes the collected line; `None` for a blank one.
    fn finish_line(&mut self) -> Option<Result<String, BadLine>> {
        let mut bytes = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.too_long) {
            return Some(Err(BadLine {
                reason: BadReason::TooLong,
                head: String::from_utf8_lossy(&bytes).into_owned(),
            }));
        }
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        Some(String::from_utf8(bytes).map_err(|e| {
            let bytes = e.into_bytes();
            BadLine {
                reason: BadReason::NotUtf8,
                head: String::from_utf8_lossy(&bytes[..bytes.len().min(BAD_LINE_HEAD)])
                    .into_owned(),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all_lines(input: &[u8], max: usize) -> Vec<Result<String, BadLine>> {
        // A tiny buffer makes lines arrive in many pieces.
        let mut reader = LineReader::new(BufReader::with_capacity(3, input), max);
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().await.unwrap() {
            out.push(line);
        }
        out
    }

    #[tokio::test]
    async fn lines_are_split_on_newlines_with_or_without_carriage_returns() {
        let lines = all_lines(b"one\r\ntwo\n\n  \nthree", 100).await;
        assert_eq!(
            lines,
            vec![Ok("one".into()), Ok("two".into()), Ok("three".into())]
        );
    }

    #[tokio::test]
    async fn a_long_line_is_refused_and_the_next_one_read() {
        let mut input = b"TASK|7|".to_vec();
        input.extend(std::iter::repeat_n(b'1', 50));
        input.extend_from_slice(b"\nshort\n");
        let lines = all_lines(&input, 20).await;
        assert_eq!(lines.len(), 2, "{lines:?}");
        let bad = lines[0].clone().unwrap_err();
        assert_eq!(bad.reason, BadReason::TooLong);
        assert!(bad.head.starts_with("TASK|7|"), "{}", bad.head);
        assert_eq!(lines[1], Ok("short".into()));
    }

    #[tokio::test]
    async fn a_long_last_line_without_newline_is_still_refused() {
        let lines = all_lines(&[b'x'; 30], 20).await;
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].clone().unwrap_err().reason, BadReason::TooLong);
    }

    #[tokio::test]
    async fn bytes_that_are_not_utf8_are_refused() {
        let lines = all_lines(b"ok\n\xff\xfe\nok\n", 100).await;
        assert_eq!(lines[0], Ok("ok".into()));
        assert_eq!(lines[1].clone().unwrap_err().reason, BadReason::NotUtf8);
        assert_eq!(lines[2], Ok("ok".into()));
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_limit_is_accepted() {
        let lines = all_lines(b"12345\n123456\n", 5).await;
        assert_eq!(lines[0], Ok("12345".into()));
        assert!(lines[1].is_err());
    }
}
