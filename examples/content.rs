//! What a request gets, whatever carries it (HTTP/3 in site.rs, HTTP/1.1
//! and HTTP/2 in tcp.rs): GET and HEAD of the regular files under the
//! root (through `RootDir`: never outside it, no dotfiles) and of
//! generated bodies at /bytes/N; Content-Type by extension; validators
//! (ETag, Last-Modified) with 304 for a conditional GET; one byte range
//! with 206 (416 when it cannot be satisfied); Alt-Svc naming the HTTP/3
//! port on every response.

use std::{
    io::{self, SeekFrom},
    ops::RangeInclusive,
    sync::Arc,
    time::SystemTime,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Bytes read or generated per chunk.
const CHUNK: usize = 64 * 1024;

/// What the content comes from, shared by the HTTP/3 and the TCP side.
#[derive(Clone)]
pub struct Content {
    /// The directory files are served from.
    pub root: Arc<crate::root_dir::RootDir>,
    /// Largest /bytes/N body served.
    pub max_generated: u64,
    /// `Alt-Svc` value announcing HTTP/3 (h3=":PORT"), if any.
    pub alt_svc: Option<HeaderValue>,
}

/// A response's head and where its body comes from.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Body,
}

/// The body of a reply, produced chunk by chunk.
pub enum Body {
    Empty,
    /// Bytes `start..start + len` of the /bytes/N pattern.
    Pattern {
        start: u64,
        len: u64,
    },
    /// Bytes `start..start + len` of a file.
    File {
        file: tokio::fs::File,
        start: u64,
        len: u64,
        positioned: bool,
    },
}

impl Body {
    /// The next chunk; None at the end.
    pub async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        match self {
            Body::Empty => Ok(None),
            Body::Pattern { len: 0, .. } | Body::File { len: 0, .. } => Ok(None),
            Body::Pattern { start, len } => {
                // Byte p is (p % 64 KiB) % 251: chunks are slices of one
                // shared block, whatever the offset.
                static PATTERN: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
                let block = PATTERN.get_or_init(|| (0..CHUNK).map(|i| (i % 251) as u8).collect());
                let offset = (*start % CHUNK as u64) as usize;
                let n = (*len).min((CHUNK - offset) as u64) as usize;
                *start += n as u64;
                *len -= n as u64;
                Ok(Some(block.slice(offset..offset + n)))
            }
            Body::File {
                file,
                start,
                len,
                positioned,
            } => {
                if !*positioned {
                    file.seek(SeekFrom::Start(*start)).await?;
                    *positioned = true;
                }
                let mut buf = vec![0u8; (*len).min(CHUNK as u64) as usize];
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shorter than its length",
                    ));
                }
                buf.truncate(n);
                *start += n as u64;
                *len -= n as u64;
                Ok(Some(Bytes::from(buf)))
            }
        }
    }
}

impl Content {
    /// The reply to `method` on `path` with the request's `headers`.
    pub fn reply(&self, method: &Method, path: &str, headers: &HeaderMap) -> Reply {
        let mut reply = self.reply_inner(method, path, headers);
        if let Some(alt_svc) = &self.alt_svc {
            reply.headers.insert(header::ALT_SVC, alt_svc.clone());
        }
        if *method == Method::HEAD {
            reply.body = Body::Empty;
        }
        reply
    }

    fn reply_inner(&self, method: &Method, path: &str, headers: &HeaderMap) -> Reply {
        if *method != Method::GET && *method != Method::HEAD {
            let mut reply = status(StatusCode::METHOD_NOT_ALLOWED);
            reply
                .headers
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return reply;
        }
        if let Some(n) = path.strip_prefix("/bytes/") {
            return match n.parse::<u64>() {
                Ok(n) if n <= self.max_generated => ranged(
                    method,
                    headers,
                    n,
                    Validators::none(),
                    "application/octet-stream",
                    |start, len| Body::Pattern { start, len },
                ),
                _ => status(StatusCode::BAD_REQUEST),
            };
        }
        let Some(file) = self.root.open_file(path) else {
            return status(StatusCode::NOT_FOUND);
        };
        let Ok(meta) = file.metadata() else {
            return status(StatusCode::INTERNAL_SERVER_ERROR);
        };
        let content_type = if path.ends_with('/') {
            "text/html"
        } else {
            mime_guess::from_path(path)
                .first_raw()
                .unwrap_or("application/octet-stream")
        };
        let validators = Validators::of(meta.len(), meta.modified().ok());
        if validators.not_modified(headers) {
            let mut reply = status(StatusCode::NOT_MODIFIED);
            reply.headers.remove(header::CONTENT_LENGTH);
            validators.write(&mut reply.headers);
            return reply;
        }
        let file = tokio::fs::File::from_std(file);
        let mut file = Some(file);
        ranged(
            method,
            headers,
            meta.len(),
            validators,
            content_type,
            |start, len| Body::File {
                file: file.take().expect("one body per reply"),
                start,
                len,
                positioned: false,
            },
        )
    }
}

/// A body-less reply with `code`.
fn status(code: StatusCode) -> Reply {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Reply {
        status: code,
        headers,
        body: Body::Empty,
    }
}

/// A 200 with the whole body, or a 206 with the one range asked for, or
/// 416. Several ranges get the whole body (a server may ignore Range), and
/// so does HEAD (ranges are defined for GET only, RFC 9110 14.2).
fn ranged(
    method: &Method,
    headers: &HeaderMap,
    len: u64,
    validators: Validators,
    content_type: &str,
    body: impl FnOnce(u64, u64) -> Body,
) -> Reply {
    let mut out = HeaderMap::new();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    validators.write(&mut out);
    let requested = if *method == Method::GET {
        requested_range(headers, len, &validators)
    } else {
        Requested::Whole
    };
    let (code, range) = match requested {
        Requested::Whole => (StatusCode::OK, 0..=len.wrapping_sub(1)),
        Requested::One(range) => {
            let value = format!("bytes {}-{}/{len}", range.start(), range.end());
            out.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&value).expect("ascii"),
            );
            (StatusCode::PARTIAL_CONTENT, range)
        }
        Requested::Unsatisfiable => {
            let mut reply = status(StatusCode::RANGE_NOT_SATISFIABLE);
            let value = format!("bytes */{len}");
            reply.headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&value).expect("ascii"),
            );
            return reply;
        }
    };
    let body_len = if len == 0 {
        0
    } else {
        range.end() - range.start() + 1
    };
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    Reply {
        status: code,
        headers: out,
        body: body(*range.start(), body_len),
    }
}

enum Requested {
    Whole,
    One(RangeInclusive<u64>),
    Unsatisfiable,
}

fn requested_range(headers: &HeaderMap, len: u64, validators: &Validators) -> Requested {
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Requested::Whole;
    };
    // If-Range: the range only applies to the representation it names.
    if let Some(if_range) = headers.get(header::IF_RANGE)
        && validators.etag.as_ref() != Some(if_range)
    {
        return Requested::Whole;
    }
    // Not a bytes range we understand: ignored (RFC 9110 14.2). Several
    // ranges get the whole body, before any work on them.
    let Ok(parsed) = http_range_header::parse_range_header(range) else {
        return Requested::Whole;
    };
    let [one] = parsed.ranges.as_slice() else {
        return Requested::Whole;
    };
    if len == 0 {
        return Requested::Unsatisfiable;
    }
    use http_range_header::{EndPosition, StartPosition};
    let (start, end) = match (&one.start, &one.end) {
        (StartPosition::Index(start), EndPosition::Index(end)) => (*start, (*end).min(len - 1)),
        (StartPosition::Index(start), EndPosition::LastByte) => (*start, len - 1),
        // A suffix longer than the body is the whole body (14.1.3).
        (StartPosition::FromLast(n), EndPosition::LastByte) => (len.saturating_sub(*n), len - 1),
        _ => return Requested::Whole,
    };
    if start > end || start >= len {
        return Requested::Unsatisfiable;
    }
    Requested::One(start..=end)
}

/// A file's ETag (size and modification time) and Last-Modified.
struct Validators {
    etag: Option<HeaderValue>,
    modified: Option<SystemTime>,
}

impl Validators {
    fn none() -> Self {
        Self {
            etag: None,
            modified: None,
        }
    }

    fn of(len: u64, modified: Option<SystemTime>) -> Self {
        let nanos = modified
            .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let etag = HeaderValue::from_str(&format!("\"{len:x}-{nanos:x}\"")).ok();
        Self { etag, modified }
    }

    fn write(&self, headers: &mut HeaderMap) {
        if let Some(etag) = &self.etag {
            headers.insert(header::ETAG, etag.clone());
        }
        if let Some(modified) = self.modified
            && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(modified))
        {
            headers.insert(header::LAST_MODIFIED, v);
        }
    }

    /// RFC 9110 13.1.2/13.1.3: If-None-Match decides when present, else
    /// If-Modified-Since.
    fn not_modified(&self, headers: &HeaderMap) -> bool {
        if let Some(inm) = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
        {
            let Some(etag) = self.etag.as_ref().and_then(|e| e.to_str().ok()) else {
                return false;
            };
            return inm
                .split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.trim_start_matches("W/") == etag);
        }
        let since = headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok());
        match (since, self.modified) {
            // HTTP dates have whole seconds.
            (Some(since), Some(modified)) => {
                modified
                    .duration_since(since)
                    .is_ok_and(|d| d.as_secs() == 0)
                    || modified <= since
            }
            _ => false,
        }
    }
}
