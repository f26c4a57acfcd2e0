//! A fake OpenAI-compatible upstream that answers after a fixed delay, like a model does.
//!
//!   upstream --listen 127.0.0.1:9103 --delay-ms 10 --chat '{…}' --sse 'data: …' --embedding '{…}'
//!
//! nginx answers in microseconds, so at concurrency 10 a closed loop through a one-core gateway
//! keeps the gateway saturated and measures its queue. A real model answers in tens of
//! milliseconds at the very least; with this upstream, 10 calls in flight spend most of their
//! time waiting on it, and "keel minus direct" is what the gateway adds to a call while it is
//! not saturated. One thread per keep-alive connection (a gateway opens about as many as it has
//! calls in flight); the same answers as bench/inference.sh's nginx: `/v1/embeddings` gets the
//! embedding, a body with `"stream":true` the SSE stream, anything else the chat completion.
//! Request bodies are read by `Content-Length` (wrk and Keel's client send it); a chunked one is
//! not understood.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

struct Answers {
    delay: Duration,
    chat: String,
    sse: String,
    embedding: String,
}

const USAGE: &str = "usage: upstream --listen HOST:PORT --delay-ms N --chat JSON --sse 'data: …' --embedding JSON";

fn main() -> ExitCode {
    let mut listen = None;
    let mut answers =
        Answers { delay: Duration::ZERO, chat: String::new(), sse: String::new(), embedding: String::new() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else {
            eprintln!("{flag} needs a value\n{USAGE}");
            return ExitCode::from(2);
        };
        match flag.as_str() {
            "--listen" => listen = Some(value),
            "--delay-ms" => match value.parse::<f64>() {
                Ok(ms) if ms >= 0.0 => answers.delay = Duration::from_secs_f64(ms / 1e3),
                _ => {
                    eprintln!("--delay-ms: not a number of milliseconds: {value}");
                    return ExitCode::from(2);
                }
            },
            // The scripts pass the SSE body with `\n` escapes, as nginx's config takes it.
            "--sse" => answers.sse = value.replace("\\n", "\n"),
            "--chat" => answers.chat = value,
            "--embedding" => answers.embedding = value,
            _ => {
                eprintln!("unknown flag {flag}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(listen) = listen else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let listener = match TcpListener::bind(&listen) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("upstream: {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let answers = Arc::new(answers);
    for conn in listener.incoming().flatten() {
        let answers = Arc::clone(&answers);
        thread::spawn(move || {
            set_timer_slack_1ns();
            // A connection ends when the client closes it or sends something unreadable.
            let _ = serve(conn, &answers);
        });
    }
    ExitCode::SUCCESS
}

fn serve(conn: TcpStream, answers: &Answers) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    let mut body = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split(' ').nth(1).unwrap_or_default().to_string();
        let mut length = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().map_err(|_| io::Error::other("bad content-length"))?;
            }
        }
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
        let (content_type, answer) = if path.ends_with("/embeddings") {
            ("application/json", &answers.embedding)
        } else if body.windows(13).any(|w| w == b"\"stream\":true") {
            ("text/event-stream", &answers.sse)
        } else {
            ("application/json", &answers.chat)
        };
        thread::sleep(answers.delay);
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        writer.write_all(response.as_bytes())?;
    }
}

fn set_timer_slack_1ns() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes plain integers and changes only this thread's slack.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}
