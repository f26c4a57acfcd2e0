//! A scriptable fake OpenAI-compatible upstream: a real HTTP/1.1 server on `127.0.0.1:0`,
//! written on tokio's TCP so that it can misbehave exactly as told (hang, trickle, cut a stream,
//! send malformed JSON) and see when its client goes away.
//!
//! Each request takes the next scripted [`Behavior`], or the default one. Chat answers follow
//! the request's `stream` flag; streamed answers send one word per chunk and, when asked
//! (`stream_options.include_usage`), a last usage chunk. Every chunk is one token under
//! OpenAI's tokenizers (`" tok"`), so counts can be checked exactly.

use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fake does with one request.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Answers with `words` words (`" tok"` each), each chunk `delay` after the previous one; with
    /// `usage`, the provider reports usage (in the JSON answer, or as a last chunk when asked).
    Answer { words: usize, delay: Duration, usage: bool },
    /// Streams `after` chunks, then closes the connection without finishing.
    CutAfter(usize),
    /// Streams `first` chunks of a `words`-word answer, then waits (up to `PAUSE`) for its client
    /// to go away, which counts as a cancellation; if it does not, streams the rest, `delay`
    /// apart. So a client that leaves during the pause was sent exactly `first` chunks.
    PauseAfter { words: usize, first: usize, delay: Duration },
    /// Answers `status` with an OpenAI error envelope and, if given, `Retry-After`.
    Status { status: u16, retry_after: Option<u64> },
    /// Reads the request and never answers.
    Hang,
    /// Answers 200 with a body that is not JSON (or, for a stream, a chunk that is not JSON).
    Malformed,
}

impl Behavior {
    pub fn answer(words: usize) -> Self {
        Self::Answer { words, delay: Duration::ZERO, usage: true }
    }
}

#[derive(Debug, Default)]
struct State {
    script: Mutex<VecDeque<Behavior>>,
    default: Mutex<Option<Behavior>>,
    requests: AtomicUsize,
    /// Streams whose client went away before the fake finished writing.
    cancelled: AtomicUsize,
    /// Chunks written (and flushed) across all streams.
    chunks_sent: AtomicUsize,
    bodies: Mutex<Vec<Value>>,
}

/// The running fake; stops when dropped.
#[derive(Debug)]
pub struct FakeOpenAi {
    pub url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const WORD: &str = " tok";

/// How long [`Behavior::PauseAfter`] waits for its client to go away.
pub const PAUSE: Duration = Duration::from_secs(10);

impl FakeOpenAi {
    /// Starts the fake with `default` as the behavior of unscripted requests.
    pub async fn start(default: Behavior) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let state = Arc::new(State { default: Mutex::new(Some(default)), ..State::default() });
        let accept_state = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, accept_state.clone()));
            }
        });
        Self { url, state, task }
    }

    /// The next requests' behaviors, in order (then the default again).
    pub fn script(&self, behaviors: impl IntoIterator<Item = Behavior>) {
        self.state.script.lock().unwrap().extend(behaviors);
    }

    pub fn set_default(&self, behavior: Behavior) {
        *self.state.default.lock().unwrap() = Some(behavior);
    }

    /// Requests received.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Streams cut short because the client went away.
    pub fn cancelled(&self) -> usize {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    pub fn chunks_sent(&self) -> usize {
        self.state.chunks_sent.load(Ordering::SeqCst)
    }

    /// The JSON bodies received, in order.
    pub fn bodies(&self) -> Vec<Value> {
        self.state.bodies.lock().unwrap().clone()
    }
}

async fn serve(mut stream: TcpStream, state: Arc<State>) {
    let mut buffer = Vec::new();
    loop {
        let Some((head_end, content_length)) = read_head(&mut stream, &mut buffer).await else { return };
        while buffer.len() < head_end + content_length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
        let body: Value = serde_json::from_slice(&buffer[head_end..head_end + content_length]).unwrap_or(Value::Null);
        buffer.drain(..head_end + content_length);
        state.requests.fetch_add(1, Ordering::SeqCst);
        state.bodies.lock().unwrap().push(body.clone());
        let behavior = state
            .script
            .lock()
            .unwrap()
            .pop_front()
            .or_else(|| state.default.lock().unwrap().clone())
            .unwrap_or(Behavior::answer(1));
        let embeddings = head.starts_with("POST /v1/embeddings");
        let keep_alive = respond(&mut stream, &state, behavior, &body, embeddings).await;
        if !keep_alive {
            return;
        }
    }
}

/// Reads a request head into `buffer`: (its length, the body's Content-Length).
async fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<(usize, usize)> {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            return Some((end + 4, length));
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

fn chunk(text: Option<&str>, finish: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "fake-upstream",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]
    })
}

async fn write_json(stream: &mut TcpStream, status: u16, headers: &str, body: &str) -> bool {
    let reply = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await.is_ok()
}

/// Writes one event and flushes it; false when the client is gone.
async fn send_event(stream: &mut TcpStream, state: &State, data: &str) -> bool {
    let ok = stream.write_all(format!("data: {data}\n\n").as_bytes()).await.is_ok() && stream.flush().await.is_ok();
    if ok {
        state.chunks_sent.fetch_add(1, Ordering::SeqCst);
    }
    ok
}

/// Answers one request; returns whether the connection can serve another.
async fn respond(stream: &mut TcpStream, state: &State, behavior: Behavior, body: &Value, embeddings: bool) -> bool {
    let streaming = body["stream"] == json!(true);
    match behavior {
        Behavior::Status { status, retry_after } => {
            let headers = retry_after.map(|s| format!("retry-after: {s}\r\n")).unwrap_or_default();
            let body =
                json!({"error": {"message": format!("fake says {status}"), "type": "x", "code": null, "param": null}});
            write_json(stream, status, &headers, &body.to_string()).await
        }
        Behavior::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            false
        }
        Behavior::Malformed if !streaming => write_json(stream, 200, "", "{\"id\": not json").await,
        Behavior::Answer { words, usage, .. } if embeddings => {
            let inputs = match &body["input"] {
                Value::Array(items) => items.len(),
                _ => 1,
            };
            let data: Vec<Value> = (0..inputs)
                .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.5, -0.25, 0.125]}))
                .collect();
            let mut answer = json!({"object": "list", "data": data, "model": "fake-embed"});
            if usage {
                answer["usage"] = json!({"prompt_tokens": words, "total_tokens": words});
            }
            write_json(stream, 200, "", &answer.to_string()).await
        }
        Behavior::Answer { words, delay, usage } if !streaming => {
            tokio::time::sleep(delay).await;
            let mut answer = json!({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": "fake-upstream",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": WORD.repeat(words)}, "finish_reason": "stop"}],
                "system_fingerprint": "fp_fake"
            });
            if usage {
                answer["usage"] = json!({"prompt_tokens": 7, "completion_tokens": words, "total_tokens": 7 + words});
            }
            write_json(stream, 200, "", &answer.to_string()).await
        }
        streamed => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            let (words, delay, usage, cut, pause) = match streamed {
                Behavior::Answer { words, delay, usage } => (words, delay, usage, None, None),
                Behavior::CutAfter(n) => (n + 1, Duration::ZERO, false, Some(n), None),
                Behavior::PauseAfter { words, first, delay } => (words, delay, true, None, Some(first)),
                _ => {
                    let _ = send_event(stream, state, "{\"id\": not json").await;
                    return false;
                }
            };
            for i in 0..words {
                if cut == Some(i) {
                    return false;
                }
                if pause == Some(i) {
                    // The client sends nothing more on this connection: a read ends only when it
                    // closes.
                    let mut byte = [0u8; 1];
                    if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(PAUSE, stream.read(&mut byte)).await {
                        state.cancelled.fetch_add(1, Ordering::SeqCst);
                        return false;
                    }
                }
                tokio::time::sleep(delay).await;
                let finish = (i + 1 == words).then_some("stop");
                if !send_event(stream, state, &chunk(Some(WORD), finish).to_string()).await {
                    state.cancelled.fetch_add(1, Ordering::SeqCst);
                    return false;
                }
            }
            if usage && body["stream_options"]["include_usage"] == json!(true) {
                let mut last = chunk(None, None);
                last["choices"] = json!([]);
                last["usage"] = json!({"prompt_tokens": 7, "completion_tokens": words, "total_tokens": 7 + words});
                let _ = send_event(stream, state, &last.to_string()).await;
            }
            let _ = send_event(stream, state, "[DONE]").await;
            false
        }
    }
}
