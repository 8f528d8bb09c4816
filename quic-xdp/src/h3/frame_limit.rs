//! A cap on the HTTP/3 frames that `h3` buffers whole.
//!
//! h3 0.0.8 reads a HEADERS frame, and any frame type it does not know,
//! completely into memory before looking at it, whatever length the frame
//! declares; flow control does not bound that, since h3 keeps reading (and
//! so granting credit) while it buffers. This parser watches the frame
//! headers of a stream's bytes as they pass to h3 and refuses a stream
//! whose non-DATA frame declares more than the limit, before h3 buffers
//! beyond it. DATA payloads (streamed by h3) are skipped by length, so the
//! cost is a few branches per frame, not per byte.

/// RFC 9114 7.2.1: DATA frames are streamed, not buffered.
const DATA: u64 = 0x00;
/// WebTransport's stream signal (h3 reads a session ID, not a length).
const WEBTRANSPORT_STREAM: u64 = 0x41;

/// Where in the stream's frame sequence the next byte falls.
#[derive(Debug)]
enum Position {
    /// A unidirectional stream's type varint; only the control stream
    /// (type 0x00) carries frames.
    StreamType { bytes: [u8; 8], have: usize },
    /// A frame's type and length varints, `have` bytes of them so far.
    FrameHeader { bytes: [u8; 16], have: usize },
    /// Inside a frame payload that has `left` bytes to go.
    Payload { left: u64 },
    /// Not a frame stream (QPACK or unknown uni stream): not watched.
    Unwatched,
}

/// The frame-length watch of one stream.
#[derive(Debug)]
pub(crate) struct FrameLimit {
    max: u64,
    position: Position,
}

/// A frame longer than the limit: the stream must be refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FrameTooLarge {
    pub frame_type: u64,
    pub length: u64,
}

impl FrameLimit {
    /// A request stream: frames from the first byte.
    pub fn request(max: u64) -> Self {
        Self {
            max,
            position: Position::FrameHeader {
                bytes: [0; 16],
                have: 0,
            },
        }
    }

    /// A unidirectional stream: a stream type, then frames if it is the
    /// control stream.
    pub fn unidirectional(max: u64) -> Self {
        Self {
            max,
            position: Position::StreamType {
                bytes: [0; 8],
                have: 0,
            },
        }
    }

    /// How many of `data`'s first bytes (at least one) form the next piece
    /// to hand h3: up to the end of the stream type, frame header or
    /// payload under way; all of them once the stream is not watched.
    ///
    /// Pieces end at frame boundaries because h3 reads one more chunk per
    /// call than it consumes: with whole chunks, a peer sending tiny DATA
    /// frames would grow h3's buffer by a chunk per frame the application
    /// reads. A piece never holds more than the frame under way.
    pub fn next_piece(&mut self, data: &[u8]) -> Result<usize, FrameTooLarge> {
        debug_assert!(!data.is_empty());
        let mut taken = 0;
        while taken < data.len() {
            let byte = data[taken];
            match &mut self.position {
                Position::Unwatched => return Ok(data.len()),
                Position::Payload { left } => {
                    let n = (*left).min(data.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        self.position = Position::frame_start();
                    }
                    return Ok(n);
                }
                Position::StreamType { bytes, have } => {
                    // A byte at a time: the type may be split, and a long
                    // encoding of 0x00 is still the control stream.
                    bytes[*have] = byte;
                    *have += 1;
                    taken += 1;
                    if *have == varint_len(bytes[0]) {
                        self.position = if varint(&bytes[..*have]) == 0x00 {
                            Position::frame_start()
                        } else {
                            Position::Unwatched
                        };
                        return Ok(taken);
                    }
                }
                Position::FrameHeader { bytes, have } => {
                    // A byte at a time: at most 16 per frame.
                    bytes[*have] = byte;
                    *have += 1;
                    taken += 1;
                    let type_len = varint_len(bytes[0]);
                    if *have == type_len && varint(&bytes[..type_len]) == WEBTRANSPORT_STREAM {
                        // No length follows: what comes is not frames.
                        self.position = Position::Unwatched;
                        return Ok(taken);
                    }
                    let Some((frame_type, length)) = frame_header(&bytes[..*have]) else {
                        continue;
                    };
                    if frame_type != DATA && length > self.max {
                        return Err(FrameTooLarge { frame_type, length });
                    }
                    self.position = if length == 0 {
                        Position::frame_start()
                    } else {
                        Position::Payload { left: length }
                    };
                    return Ok(taken);
                }
            }
        }
        Ok(taken)
    }
}

impl Position {
    fn frame_start() -> Self {
        Position::FrameHeader {
            bytes: [0; 16],
            have: 0,
        }
    }
}

/// A frame's type and length, once `bytes` holds both varints whole.
fn frame_header(bytes: &[u8]) -> Option<(u64, u64)> {
    let type_len = varint_len(bytes[0]);
    let length_len = varint_len(*bytes.get(type_len)?);
    (bytes.len() == type_len + length_len)
        .then(|| (varint(&bytes[..type_len]), varint(&bytes[type_len..])))
}

/// A QUIC varint's encoded length from its first byte (RFC 9000 16).
fn varint_len(first: u8) -> usize {
    1 << (first >> 6)
}

/// Decodes a complete varint.
fn varint(bytes: &[u8]) -> u64 {
    let mut value = u64::from(bytes[0] & 0x3f);
    for &b in &bytes[1..] {
        value = value << 8 | u64::from(b);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A varint in its shortest form.
    fn var(v: u64) -> Vec<u8> {
        match v {
            0..64 => vec![v as u8],
            64..16384 => (v as u16 | 0x4000).to_be_bytes().to_vec(),
            16384..1073741824 => (v as u32 | 0x8000_0000).to_be_bytes().to_vec(),
            _ => (v | 0xc000_0000_0000_0000).to_be_bytes().to_vec(),
        }
    }

    fn frame(ty: u64, payload_len: u64) -> Vec<u8> {
        let mut f = var(ty);
        f.extend(var(payload_len));
        f
    }

    /// Feeds `stream` in chunks of `chunk` bytes, as the pieces the limit
    /// cuts them into; the pieces' lengths.
    fn pieces(
        limit: &mut FrameLimit,
        stream: &[u8],
        chunk: usize,
    ) -> Result<Vec<usize>, FrameTooLarge> {
        let mut lengths = Vec::new();
        for mut c in stream.chunks(chunk) {
            while !c.is_empty() {
                let n = limit.next_piece(c)?;
                assert!((1..=c.len()).contains(&n));
                lengths.push(n);
                c = &c[n..];
            }
        }
        Ok(lengths)
    }

    fn feed(limit: &mut FrameLimit, stream: &[u8], chunk: usize) -> Result<(), FrameTooLarge> {
        pieces(limit, stream, chunk).map(drop)
    }

    #[test]
    fn frames_within_the_limit_pass_however_split() {
        let mut stream = frame(0x01, 100);
        stream.extend([7; 100]);
        // DATA of any size passes: h3 streams it.
        stream.extend(frame(DATA, 1 << 40));
        let data_start = stream.len();
        stream.extend(vec![0; 5000]);
        for piece in [1, 2, 3, 7, 64, 100_000] {
            let mut limit = FrameLimit::request(1024);
            assert_eq!(feed(&mut limit, &stream, piece), Ok(()), "{piece}");
            assert!(
                matches!(limit.position, Position::Payload { left } if left == (1 << 40) - (stream.len() - data_start) as u64)
            );
        }
    }

    #[test]
    fn oversized_headers_and_unknown_frames_are_refused_at_their_header() {
        for ty in [0x01, 0x21, 0x1f * 7 + 0x21, 0x3fff_ffff] {
            for piece in [1, 2, 100] {
                let mut stream = frame(0x01, 3);
                stream.extend([1, 2, 3]);
                stream.extend(frame(ty, 1025));
                let mut limit = FrameLimit::request(1024);
                assert_eq!(
                    feed(&mut limit, &stream, piece),
                    Err(FrameTooLarge {
                        frame_type: ty,
                        length: 1025
                    })
                );
            }
        }
        // At the limit exactly: fine.
        let mut limit = FrameLimit::request(1024);
        assert_eq!(limit.next_piece(&frame(0x01, 1024)), Ok(3));
        // An 8-byte length varint.
        let mut limit = FrameLimit::request(1024);
        assert!(limit.next_piece(&frame(0x01, 1 << 61)).is_err());
    }

    #[test]
    fn only_the_control_stream_among_unidirectional_ones_is_watched() {
        let mut control = var(0x00);
        control.extend(frame(0x04, 6)); // SETTINGS
        control.extend([0; 6]);
        control.extend(frame(0x21, 1 << 20)); // a reserved type
        let mut limit = FrameLimit::unidirectional(4096);
        assert!(feed(&mut limit, &control, 3).is_err());

        // The control stream's type in a long encoding, split.
        let mut long = vec![0x80, 0, 0, 0];
        long.extend(frame(0x21, 1 << 20));
        let mut limit = FrameLimit::unidirectional(4096);
        assert!(feed(&mut limit, &long, 1).is_err());

        for stream_type in [0x02, 0x03, 0x21] {
            let mut other = var(stream_type);
            other.extend(frame(0x21, 1 << 20));
            let mut limit = FrameLimit::unidirectional(4096);
            assert_eq!(feed(&mut limit, &other, 1), Ok(()));
        }
    }

    #[test]
    fn pieces_end_at_frame_boundaries() {
        // Tiny DATA frames in one chunk: header, payload, header, ...
        let mut stream = frame(0x01, 2);
        stream.extend([1, 2]);
        for _ in 0..3 {
            stream.extend(frame(DATA, 1));
            stream.push(9);
        }
        let mut limit = FrameLimit::request(1024);
        assert_eq!(
            pieces(&mut limit, &stream, 1000),
            Ok(vec![2, 2, 2, 1, 2, 1, 2, 1])
        );
        // A payload longer than the chunk: the chunk whole.
        let mut stream = frame(DATA, 3000);
        stream.extend([0; 3000]);
        let mut limit = FrameLimit::request(1024);
        assert_eq!(
            pieces(&mut limit, &stream, 1200),
            Ok(vec![3, 1197, 1200, 603])
        );
    }

    #[test]
    fn a_webtransport_stream_is_not_read_as_frames() {
        let mut stream = var(WEBTRANSPORT_STREAM);
        stream.extend(var(4)); // a session ID, not a length
        stream.extend(frame(0x21, 1 << 20)); // its data: not frames
        let mut limit = FrameLimit::request(1024);
        assert_eq!(feed(&mut limit, &stream, 1), Ok(()));
    }
}
