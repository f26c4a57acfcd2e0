//! Just enough HTTP/1.1 for a load generator: a target URL, a request built once, and a response
//! reader that consumes exactly one response (status line, headers, then the body framed by
//! `Content-Length` or `Transfer-Encoding: chunked`, or by the connection's end) so that the
//! keep-alive connection is positioned at the next response. Bodies are counted, not kept.

use std::io::{self, Read};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Instant;

/// `http://host[:port][/path]`; no TLS: the benchmark stays on the loopback.
pub struct Target {
    pub addr: SocketAddr,
    /// `host[:port]` as written, for the Host header.
    pub authority: String,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("{authority}: {e}"))?
            .next()
            .ok_or_else(|| format!("{authority}: no address"))?;
        Ok(Self { addr, authority: authority.to_string(), path: path.to_string() })
    }
}

/// The request's bytes, built once and written as they are for every call.
pub fn build_request(method: &str, target: &Target, headers: &[String], body: Option<&str>) -> Vec<u8> {
    let mut head = format!("{method} {} HTTP/1.1\r\nHost: {}\r\n", target.path, target.authority);
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    if let Some(body) = body {
        head.push_str("Content-Type: application/json\r\n");
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if let Some(body) = body {
        bytes.extend_from_slice(body.as_bytes());
    }
    bytes
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Body bytes after de-chunking.
    pub body_len: usize,
    /// When the first byte of the response was available to us.
    pub first_byte: Instant,
    /// The server closes the connection after this response (`Connection: close`, or a body
    /// delimited by the connection's end): the caller must reconnect.
    pub close: bool,
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Reads responses from one connection. The buffer persists across responses so that bytes read
/// past the end of one (there should be none without pipelining) are not lost.
pub struct ResponseReader {
    /// Zero-filled once; grows only for a head or line longer than it.
    buf: Vec<u8>,
    /// The unconsumed bytes are `buf[pos..end]`.
    pos: usize,
    end: usize,
}

const MAX_HEAD: usize = 64 * 1024;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl Default for ResponseReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseReader {
    pub fn new() -> Self {
        Self { buf: vec![0; 16 * 1024], pos: 0, end: 0 }
    }

    /// Reads one whole response.
    pub fn read_response<R: Read>(&mut self, conn: &mut R) -> io::Result<Response> {
        if self.pos == self.end {
            self.fill(conn)?;
        }
        let first_byte = Instant::now();

        let head_end = loop {
            let found = find(&self.buf[self.pos..self.end], b"\r\n\r\n");
            if found.unwrap_or(self.end - self.pos) > MAX_HEAD {
                return Err(invalid("response head too large"));
            }
            if let Some(i) = found {
                break self.pos + i + 4;
            }
            self.fill(conn)?;
        };
        let head = std::str::from_utf8(&self.buf[self.pos..head_end - 4])
            .map_err(|_| invalid("response head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") {
            return Err(invalid(format!("bad status line: {status_line:?}")));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line: {status_line:?}")))?;
        let mut close = version == "HTTP/1.0";
        let mut length = None;
        let mut chunked = false;
        for line in lines {
            let (name, value) = line.split_once(':').ok_or_else(|| invalid(format!("bad header: {line:?}")))?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().map_err(|_| invalid(format!("bad content-length: {value:?}")))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.rsplit(',').next().is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.split(',').any(|v| v.trim().eq_ignore_ascii_case("close"));
            }
        }
        self.pos = head_end;

        // RFC 9112 §6.3: no body for 1xx, 204 and 304; chunked wins over Content-Length.
        let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
            Framing::Length(0)
        } else if chunked {
            Framing::Chunked
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
        let body_len = match framing {
            Framing::Length(n) => {
                self.skip(conn, n)?;
                n
            }
            Framing::Chunked => self.read_chunked(conn)?,
            Framing::UntilClose => {
                close = true;
                let mut n = self.end - self.pos;
                self.pos = self.end;
                let mut scratch = [0u8; 16 * 1024];
                loop {
                    match conn.read(&mut scratch)? {
                        0 => break,
                        k => n += k,
                    }
                }
                n
            }
        };
        Ok(Response { status, body_len, first_byte, close })
    }

    /// Chunks: `size-in-hex[;extensions]\r\n data \r\n`, ended by a zero-size chunk, optional
    /// trailer fields and an empty line.
    fn read_chunked<R: Read>(&mut self, conn: &mut R) -> io::Result<usize> {
        let mut total = 0;
        loop {
            let line = self.read_line(conn)?;
            let size_text = line.split(';').next().unwrap_or_default().trim();
            let size =
                usize::from_str_radix(size_text, 16).map_err(|_| invalid(format!("bad chunk size: {line:?}")))?;
            if size == 0 {
                while !self.read_line(conn)?.is_empty() {}
                return Ok(total);
            }
            self.skip(conn, size)?;
            if !self.read_line(conn)?.is_empty() {
                return Err(invalid("chunk data not followed by CRLF"));
            }
            total += size;
        }
    }

    /// One CRLF-terminated line, without the CRLF.
    fn read_line<R: Read>(&mut self, conn: &mut R) -> io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf[self.pos..self.end], b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[self.pos..self.pos + i]).into_owned();
                self.pos += i + 2;
                return Ok(line);
            }
            if self.end - self.pos > MAX_HEAD {
                return Err(invalid("line too long"));
            }
            self.fill(conn)?;
        }
    }

    /// Consumes `n` bytes, reading as needed.
    fn skip<R: Read>(&mut self, conn: &mut R, mut n: usize) -> io::Result<()> {
        loop {
            let available = (self.end - self.pos).min(n);
            self.pos += available;
            n -= available;
            if n == 0 {
                return Ok(());
            }
            self.fill(conn)?;
        }
    }

    /// Appends one read's worth of bytes, after moving the unconsumed ones to the front.
    fn fill<R: Read>(&mut self, conn: &mut R) -> io::Result<()> {
        self.buf.copy_within(self.pos..self.end, 0);
        self.end -= self.pos;
        self.pos = 0;
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        match conn.read(&mut self.buf[self.end..])? {
            0 => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-response")),
            n => {
                self.end += n;
                Ok(())
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Hands out the given pieces one `read` at a time, as a socket might.
    struct Pieces(VecDeque<Vec<u8>>);

    impl Pieces {
        fn new(pieces: &[&[u8]]) -> Self {
            Self(pieces.iter().map(|p| p.to_vec()).collect())
        }
    }

    impl Read for Pieces {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let Some(mut piece) = self.0.pop_front() else { return Ok(0) };
            let n = piece.len().min(out.len());
            out[..n].copy_from_slice(&piece[..n]);
            if n < piece.len() {
                self.0.push_front(piece.split_off(n));
            }
            Ok(n)
        }
    }

    #[test]
    fn content_length_then_next_response_on_the_same_connection() {
        let mut conn = Pieces::new(&[
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 2\r\n\r\n{}",
        ]);
        let mut reader = ResponseReader::new();
        let first = reader.read_response(&mut conn).unwrap();
        assert_eq!((first.status, first.body_len, first.close), (200, 5, false));
        let second = reader.read_response(&mut conn).unwrap();
        assert_eq!((second.status, second.body_len, second.close), (429, 2, false));
        assert_eq!(reader.read_response(&mut conn).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let bytes: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5\r\nhello\r\n\
            7;name=value\r\n, world\r\n\
            1A\r\nabcdefghijklmnopqrstuvwxyz\r\n\
            0;last\r\nX-Trailer: 1\r\nY-Trailer: 2\r\n\r\n\
            HTTP/1.1 204 No Content\r\n\r\n";
        let mut conn = Pieces::new(&[bytes]);
        let mut reader = ResponseReader::new();
        let response = reader.read_response(&mut conn).unwrap();
        assert_eq!((response.status, response.body_len), (200, 5 + 7 + 26));
        let next = reader.read_response(&mut conn).unwrap();
        assert_eq!((next.status, next.body_len), (204, 0));
    }

    #[test]
    fn a_response_split_across_many_reads() {
        let whole: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n\
            3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
        // Every split point, and one byte per read.
        for cut in 1..whole.len() {
            let mut conn = Pieces::new(&[&whole[..cut], &whole[cut..]]);
            let response = ResponseReader::new().read_response(&mut conn).unwrap();
            assert_eq!((response.status, response.body_len), (200, 19), "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        let response = ResponseReader::new().read_response(&mut Pieces::new(&bytes)).unwrap();
        assert_eq!(response.body_len, 19);
    }

    #[test]
    fn a_head_longer_than_the_buffer() {
        let head = format!("HTTP/1.1 200 OK\r\nX-Long: {}\r\nContent-Length: 3\r\n\r\nabc", "v".repeat(40_000));
        let mut conn = Pieces::new(&[head.as_bytes()]);
        assert_eq!(ResponseReader::new().read_response(&mut conn).unwrap().body_len, 3);

        let head = format!("HTTP/1.1 200 OK\r\nX-Long: {}\r\n\r\n", "v".repeat(MAX_HEAD + 1));
        let mut conn = Pieces::new(&[head.as_bytes()]);
        assert_eq!(ResponseReader::new().read_response(&mut conn).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn connection_close_and_body_until_close() {
        let mut conn = Pieces::new(&[b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"]);
        let response = ResponseReader::new().read_response(&mut conn).unwrap();
        assert!(response.close);

        let mut conn = Pieces::new(&[b"HTTP/1.1 200 OK\r\n\r\nsome", b" more"]);
        let response = ResponseReader::new().read_response(&mut conn).unwrap();
        assert_eq!((response.body_len, response.close), (9, true));
    }

    #[test]
    fn truncated_and_malformed_responses_are_errors() {
        let mut conn = Pieces::new(&[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"]);
        assert_eq!(ResponseReader::new().read_response(&mut conn).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);

        let mut conn = Pieces::new(&[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]);
        assert_eq!(ResponseReader::new().read_response(&mut conn).unwrap_err().kind(), io::ErrorKind::InvalidData);

        let mut conn = Pieces::new(&[b"SSH-2.0-OpenSSH\r\n\r\n"]);
        assert_eq!(ResponseReader::new().read_response(&mut conn).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn request_bytes() {
        let target = Target::parse("http://127.0.0.1:9101/v1/chat/completions").unwrap();
        let request = build_request("POST", &target, &["Authorization: Bearer k".to_string()], Some("{}"));
        assert_eq!(
            String::from_utf8(request).unwrap(),
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:9101\r\nAuthorization: Bearer k\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
        assert_eq!(Target::parse("http://127.0.0.1:8080").unwrap().path, "/");
        assert!(Target::parse("https://127.0.0.1:8080/").is_err());
    }
}
