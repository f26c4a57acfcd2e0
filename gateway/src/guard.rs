//! A guard in front of actix's HTTP/1 codec, so that requests rejected before they reach the
//! application still get Keel's JSON envelope.
//!
//! actix-http answers a request head it cannot take (too large, too many headers, malformed,
//! too slow to arrive) itself, with an empty body, and no middleware sees it. The guard reads
//! each request head first, holds it back until it is complete, checks it the way the codec
//! would (size, header count, syntax, body framing), and only then hands it on. A head that
//! fails gets a 431, 400 or 408 envelope written by the guard, after which the connection is
//! closed gracefully: the rest of the client's request is read and dropped (for at most
//! [`LINGER`]) so that the client sees the answer rather than a reset.
//!
//! Bodies are not held back: the guard follows their framing (`Content-Length` or chunked) only
//! to know where the next head starts on a keep-alive connection.

use actix_web::web::{Bytes, BytesMut};
use shared::ErrorKind;
use shared::http::WriteProgress;
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// actix-http's own limit on the number of headers.
const MAX_HEADERS: usize = 96;
/// How long a rejected connection is read and drained before it is closed.
pub const LINGER: Duration = Duration::from_secs(2);
/// The most a rejected connection is drained of.
const LINGER_BYTES: usize = 1 << 20;
/// The most one read takes from the connection.
const READ_SIZE: usize = 8192;

/// What the guard enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest request line plus headers, in bytes.
    pub max_head_bytes: usize,
    /// How long a client may take to send a whole head, from its first byte (or from the
    /// connection's start for the first request).
    pub head_timeout: Duration,
}

/// Where the guard is in the byte stream of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Reading a request head (held back).
    Head,
    /// Passing `n` more bytes of a `Content-Length` body.
    Body(u64),
    /// Passing a chunked body.
    Chunked(Chunk),
    /// After an upgrade, or a body the guard cannot follow: everything passes.
    Through,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line: the size so far, its digit count, and whether an extension
    /// (after `;`) has started.
    Size { size: u64, digits: u8, extension: bool },
    /// `n` more bytes of chunk data and its CRLF.
    Data(u64),
    /// Reading trailer lines; `line` is the length of the current one.
    Trailer { line: usize },
}

const CHUNK_START: Chunk = Chunk::Size { size: 0, digits: 0, extension: false };

/// A rejection being written, then the connection drained and closed.
#[derive(Debug)]
enum Closing {
    Writing { reply: Bytes, written: usize },
    ShuttingDown,
    Draining { until: Instant, drained: usize },
    Done,
}

/// A connection with the guard in front of it.
#[derive(Debug)]
pub struct Guarded<T> {
    io: T,
    peer: Option<SocketAddr>,
    limits: Limits,
    framing: Framing,
    /// The head being read, held back until complete.
    head: BytesMut,
    /// Bytes checked and ready for actix.
    ready: Bytes,
    /// The head deadline, while a head is being read.
    timer: Option<Pin<Box<Sleep>>>,
    closing: Option<Closing>,
    /// Counts completed flushes, for streamed responses (see `shared::http::WriteProgress`).
    progress: Arc<WriteProgress>,
}

thread_local! {
    /// Where reads land, shared by the connections of a thread: a read is over before the next
    /// begins. Zeroed once per thread, where a buffer on the stack was zeroed on every read
    /// and one per connection would cost 8 KiB for each idle keep-alive connection.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_SIZE].into_boxed_slice());
}

/// Reads once from `io` into the thread's scratch buffer: what was read (empty at the end of
/// the stream).
fn read_some<T: AsyncRead + Unpin>(io: &mut T, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
    SCRATCH.with_borrow_mut(|scratch| {
        let mut read = ReadBuf::new(scratch);
        ready!(Pin::new(io).poll_read(cx, &mut read))?;
        Poll::Ready(Ok(Bytes::copy_from_slice(read.filled())))
    })
}

impl<T: AsyncRead + AsyncWrite + Unpin> Guarded<T> {
    pub fn new(io: T, peer: Option<SocketAddr>, limits: Limits) -> Self {
        let timer = Some(Box::pin(tokio::time::sleep(limits.head_timeout)));
        Self {
            io,
            peer,
            limits,
            framing: Framing::Head,
            head: BytesMut::new(),
            ready: Bytes::new(),
            timer,
            closing: None,
            progress: Arc::default(),
        }
    }

    /// The connection's write progress, shared with the requests it serves.
    pub fn progress(&self) -> Arc<WriteProgress> {
        self.progress.clone()
    }

    /// Starts rejecting the connection with `kind`'s envelope.
    fn reject(&mut self, kind: ErrorKind, code: &str, message: &str) {
        let id = uuid::Uuid::now_v7().to_string();
        tracing::warn!(
            http.status_code = kind.status(),
            error.code = code,
            request.id = %id,
            client.address = ?self.peer,
            "request rejected before routing"
        );
        self.head.clear();
        self.timer = None;
        self.closing = Some(Closing::Writing { reply: reply(kind, code, message, &id), written: 0 });
    }

    /// Follows the framing over `input` (just read), moving what may go on into `ready`.
    fn feed(&mut self, mut input: Bytes) {
        let mut out = BytesMut::new();
        while !input.is_empty() && self.closing.is_none() {
            match self.framing {
                Framing::Head => {
                    if self.head.is_empty() && self.timer.is_none() {
                        self.timer = Some(Box::pin(tokio::time::sleep(self.limits.head_timeout)));
                    }
                    let from = self.head.len().saturating_sub(3);
                    self.head.extend_from_slice(&input);
                    input = Bytes::new();
                    let Some(end) = find(&self.head[from..], b"\r\n\r\n").map(|i| from + i + 4) else {
                        if self.head.len() > self.limits.max_head_bytes {
                            self.reject(ErrorKind::HeadersTooLarge, "headers_too_large", TOO_LARGE);
                        }
                        continue;
                    };
                    if end > self.limits.max_head_bytes {
                        self.reject(ErrorKind::HeadersTooLarge, "headers_too_large", TOO_LARGE);
                        continue;
                    }
                    let head = self.head.split_to(end);
                    // What followed the head goes through the head's framing.
                    input = std::mem::take(&mut self.head).freeze();
                    match check_head(&head) {
                        Ok(framing) => {
                            self.timer = None;
                            self.framing = framing;
                            out.extend_from_slice(&head);
                        }
                        Err((kind, code, message)) => self.reject(kind, code, message),
                    }
                }
                Framing::Body(remaining) => {
                    let n = input.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input.split_to(n));
                    let left = remaining - n as u64;
                    self.framing = if left == 0 { Framing::Head } else { Framing::Body(left) };
                }
                Framing::Chunked(chunk) => {
                    let (used, next) = follow_chunk(chunk, &input);
                    out.extend_from_slice(&input.split_to(used));
                    self.framing = next;
                }
                Framing::Through => {
                    out.extend_from_slice(&input);
                    input = Bytes::new();
                }
            }
        }
        self.ready = concat(std::mem::take(&mut self.ready), out.freeze());
    }

    /// Writes the rejection, shuts down the write side, drains, then reports end of stream.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.closing.as_mut() {
                Some(Closing::Writing { reply, written }) => {
                    while *written < reply.len() {
                        let n = ready!(Pin::new(&mut self.io).poll_write(cx, &reply[*written..]))?;
                        if n == 0 {
                            return Poll::Ready(Ok(()));
                        }
                        *written += n;
                    }
                    self.closing = Some(Closing::ShuttingDown);
                }
                Some(Closing::ShuttingDown) => {
                    // A client that already went away is no reason to fail.
                    let _ = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
                    self.timer = Some(Box::pin(tokio::time::sleep(LINGER)));
                    self.closing = Some(Closing::Draining { until: Instant::now() + LINGER, drained: 0 });
                }
                Some(Closing::Draining { until, drained }) => {
                    if Instant::now() >= *until || *drained > LINGER_BYTES {
                        self.closing = Some(Closing::Done);
                        continue;
                    }
                    match read_some(&mut self.io, cx) {
                        Poll::Ready(Ok(read)) if read.is_empty() => self.closing = Some(Closing::Done),
                        Poll::Ready(Ok(read)) => *drained += read.len(),
                        Poll::Ready(Err(_)) => self.closing = Some(Closing::Done),
                        Poll::Pending => {
                            if let Some(timer) = self.timer.as_mut() {
                                ready!(timer.as_mut().poll(cx));
                            }
                            self.closing = Some(Closing::Done);
                        }
                    }
                }
                Some(Closing::Done) | None => return Poll::Ready(Ok(())),
            }
        }
    }
}

const TOO_LARGE: &str = "The request's headers are too large.";

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.closing.is_some() {
                // End of stream for actix once the rejection is out.
                return this.poll_close(cx);
            }
            match read_some(&mut this.io, cx) {
                Poll::Ready(Ok(read)) if read.is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(read)) => this.feed(read),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Waiting for a head: the deadline is the other way out.
                    if this.framing == Framing::Head
                        && let Some(timer) = this.timer.as_mut()
                    {
                        ready!(timer.as_mut().poll(cx));
                        this.reject(
                            ErrorKind::RequestTimeout,
                            "request_timeout",
                            "The request took too long to arrive.",
                        );
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    /// actix flushes once everything it buffered was accepted by the socket: each completed
    /// flush is counted in the connection's [`WriteProgress`].
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = ready!(Pin::new(&mut self.io).poll_flush(cx));
        if result.is_ok() {
            self.progress.flushed();
        }
        Poll::Ready(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

fn concat(a: Bytes, b: Bytes) -> Bytes {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b,
        (_, true) => a,
        _ => {
            let mut joined = BytesMut::with_capacity(a.len() + b.len());
            joined.extend_from_slice(&a);
            joined.extend_from_slice(&b);
            joined.freeze()
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

type Refusal = (ErrorKind, &'static str, &'static str);

fn bad(message: &'static str) -> Refusal {
    (ErrorKind::InvalidRequest, "bad_request", message)
}

/// Checks a complete head as actix's codec would, and returns how its body is framed.
fn check_head(head: &[u8]) -> Result<Framing, Refusal> {
    // Empty lines before a request line are allowed (RFC 9112, 2.2).
    let start = head.iter().position(|b| *b != b'\r' && *b != b'\n').unwrap_or(head.len());
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(&head[start..]) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad("The request is malformed.")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err((ErrorKind::HeadersTooLarge, "headers_too_large", "The request has too many headers."));
        }
        Err(_) => return Err(bad("The request is malformed.")),
    }
    if request.path.is_some_and(|p| p.parse::<actix_web::http::Uri>().is_err()) {
        return Err(bad("The request target is malformed."));
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut upgrade = false;
    for header in request.headers.iter() {
        let value = std::str::from_utf8(header.value).map_err(|_| bad("A header value is malformed."))?.trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            let parsed = value.parse::<u64>().ok().filter(|_| value.bytes().all(|b| b.is_ascii_digit()));
            match (length, parsed) {
                (_, None) => return Err(bad("Content-Length is malformed.")),
                (Some(a), Some(b)) if a != b => return Err(bad("Content-Length is given twice.")),
                (_, Some(n)) => length = Some(n),
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.rsplit(',').next().is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            if !chunked {
                return Err(bad("Only chunked transfer coding is accepted."));
            }
        } else if header.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    Ok(match (chunked, length) {
        (true, Some(_)) => return Err(bad("Content-Length and Transfer-Encoding are both given.")),
        (true, None) => Framing::Chunked(CHUNK_START),
        _ if upgrade => Framing::Through,
        (false, Some(n)) if n > 0 => Framing::Body(n),
        (false, _) => Framing::Head,
    })
}

/// Follows a chunked body over `bytes`: how many of them belong to it, and the framing after.
/// A body the guard cannot read is left to actix (`Through`), which answers it.
fn follow_chunk(mut chunk: Chunk, bytes: &[u8]) -> (usize, Framing) {
    let mut used = 0;
    while used < bytes.len() {
        if let Chunk::Data(n) = chunk {
            let take = (bytes.len() - used).min(usize::try_from(n).unwrap_or(usize::MAX));
            used += take;
            let left = n - take as u64;
            chunk = if left == 0 { CHUNK_START } else { Chunk::Data(left) };
            continue;
        }
        let b = bytes[used];
        used += 1;
        chunk = match chunk {
            Chunk::Size { size, digits, extension } => match b {
                b'\n' if digits == 0 => return (used, Framing::Through),
                b'\n' if size == 0 => Chunk::Trailer { line: 0 },
                b'\n' => match size.checked_add(2) {
                    Some(n) => Chunk::Data(n),
                    None => return (used, Framing::Through),
                },
                b'\r' => chunk,
                _ if extension => chunk,
                b';' | b' ' | b'\t' => Chunk::Size { size, digits, extension: true },
                _ => match (char::from(b).to_digit(16), size.checked_mul(16)) {
                    (Some(d), Some(shifted)) if digits < 16 => {
                        Chunk::Size { size: shifted + u64::from(d), digits: digits + 1, extension }
                    }
                    _ => return (used, Framing::Through),
                },
            },
            Chunk::Trailer { line } => match b {
                b'\n' if line == 0 => return (used, Framing::Head),
                b'\n' => Chunk::Trailer { line: 0 },
                b'\r' => chunk,
                _ => Chunk::Trailer { line: line + 1 },
            },
            Chunk::Data(_) => chunk,
        };
    }
    (used, Framing::Chunked(chunk))
}

/// The whole HTTP/1.1 answer for a rejection.
fn reply(kind: ErrorKind, code: &str, message: &str, request_id: &str) -> Bytes {
    let body = serde_json::to_vec(&shared::ErrorEnvelope::new(kind, code, message, None)).unwrap_or_default();
    let status =
        actix_web::http::StatusCode::from_u16(kind.status()).unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\
         x-request-id: {request_id}\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    );
    let mut out = BytesMut::from(head.as_bytes());
    out.extend_from_slice(&body);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const LIMITS: Limits = Limits { max_head_bytes: 1024, head_timeout: Duration::from_secs(5) };

    /// A guarded server end and the client end of an in-memory connection.
    fn connection() -> (Guarded<DuplexStream>, DuplexStream) {
        let (client, server) = tokio::io::duplex(1 << 20);
        (Guarded::new(server, None, LIMITS), client)
    }

    /// Everything the guard passes on until the client's end closes.
    async fn passed(input: &[u8]) -> Vec<u8> {
        let (mut guarded, mut client) = connection();
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        let mut out = Vec::new();
        guarded.read_to_end(&mut out).await.unwrap();
        out
    }

    /// What the client receives when the guard rejects `input`, and what actix got first.
    async fn rejected(input: &[u8]) -> (String, Vec<u8>) {
        let (mut guarded, mut client) = connection();
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        let mut to_actix = Vec::new();
        guarded.read_to_end(&mut to_actix).await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        (answer, to_actix)
    }

    fn body_of(answer: &str) -> serde_json::Value {
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn pipelined_requests_with_bodies_pass_unchanged() {
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\n\r\n\
                      POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
                      GET /d HTTP/1.1\r\n\r\n";
        assert_eq!(passed(input).await, input.to_vec());
    }

    #[tokio::test]
    async fn a_head_arriving_byte_by_byte_passes_once_complete() {
        let (mut guarded, mut client) = connection();
        let input = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n";
        let writer = tokio::spawn(async move {
            for byte in input {
                client.write_all(&[*byte]).await.unwrap();
                tokio::task::yield_now().await;
            }
            client.shutdown().await.unwrap();
        });
        let mut out = Vec::new();
        guarded.read_to_end(&mut out).await.unwrap();
        writer.await.unwrap();
        assert_eq!(out, input.to_vec());
    }

    #[tokio::test]
    async fn an_oversized_head_gets_a_431_envelope_and_never_reaches_actix() {
        let input = format!("GET / HTTP/1.1\r\nCookie: {}\r\n\r\n", "c".repeat(4096));
        let (answer, to_actix) = rejected(input.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{answer}");
        assert!(answer.contains("content-type: application/json\r\n") && answer.contains("x-request-id: "));
        assert_eq!(
            body_of(&answer),
            serde_json::json!({"error": {"message": TOO_LARGE, "type": "invalid_request_error", "code": "headers_too_large", "param": null}})
        );
        assert!(to_actix.is_empty());
    }

    #[tokio::test]
    async fn too_many_headers_get_a_431_and_a_malformed_head_a_400() {
        let many: String = (0..100).map(|n| format!("X-{n}: v\r\n")).collect();
        let (answer, _) = rejected(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        for bad in [
            &b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"[..],
            b"NOT-HTTP\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 12x\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let (answer, to_actix) = rejected(bad).await;
            assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
            assert_eq!(body_of(&answer)["error"]["code"], "bad_request");
            assert!(to_actix.is_empty());
        }
    }

    #[tokio::test]
    async fn a_request_that_comes_after_a_good_one_is_checked_too() {
        let input = format!("GET /ok HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nCookie: {}\r\n\r\n", "c".repeat(4096));
        let (answer, to_actix) = rejected(input.as_bytes()).await;
        assert_eq!(to_actix, b"GET /ok HTTP/1.1\r\n\r\n".to_vec());
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_too_slow_to_arrive_gets_a_408_envelope() {
        let (mut guarded, mut client) = connection();
        client.write_all(b"GET / HTTP/1.1\r\nHost:").await.unwrap();
        let mut to_actix = Vec::new();
        guarded.read_to_end(&mut to_actix).await.unwrap();
        assert!(to_actix.is_empty());
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{answer}");
        assert_eq!(body_of(&answer)["error"]["code"], "request_timeout");
    }
}
