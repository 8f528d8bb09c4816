//! `DatapathConfig::capture`: every datagram the endpoint receives and
//! sends, written to a pcap file, since steered traffic never reaches
//! tcpdump. AF_XDP frames are written as they are on the wire; datagrams
//! of the kernel sockets (UDP mode, what escapes steering) get Ethernet,
//! IP and UDP headers made up for them (MAC addresses zero), so one file
//! holds all of the endpoint's traffic.

use std::{
    fmt,
    fs::File,
    io::{self, BufWriter},
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
};
use smoltcp::wire::EthernetAddress;

use crate::{
    io::EcnCodepoint,
    wire::{FrameRoute, MAX_HEADER_LEN, emit_udp_headers},
};

/// pcap's file header and per-packet record header.
const PCAP_HEADER_LEN: u64 = 24;
const PACKET_HEADER_LEN: u64 = 16;

/// A pcap file the queues write to (shared by every queue).
pub struct Capture {
    /// None once a write failed or the file is full: capture stops, the
    /// endpoint goes on.
    writer: Mutex<Option<Writer>>,
}

struct Writer {
    pcap: PcapWriter<BufWriter<File>>,
    /// Bytes the file may still grow by.
    room: u64,
}

impl fmt::Debug for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capture").finish_non_exhaustive()
    }
}

impl Capture {
    /// Creates (truncates) `path` and writes the pcap header (Ethernet).
    /// Not through a symbolic link, and readable by the owner only: it
    /// holds whatever peers send. Capture stops (with a warning) before the
    /// file would exceed `max_bytes`: peers must not be able to fill the
    /// disk.
    pub fn create(path: &Path, max_bytes: u64) -> io::Result<Arc<Self>> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let file = BufWriter::new(file);
        let header = PcapHeader {
            datalink: DataLink::ETHERNET,
            // Larger than any UDP datagram with its headers (a GRO'd or
            // reassembled one on the kernel path included).
            snaplen: 262_144,
            ..PcapHeader::default()
        };
        let pcap = PcapWriter::with_header(file, header).map_err(io::Error::other)?;
        Ok(Arc::new(Self {
            writer: Mutex::new(Some(Writer {
                pcap,
                room: max_bytes.saturating_sub(PCAP_HEADER_LEN),
            })),
        }))
    }

    /// A frame as it is on the wire.
    pub fn frame(&self, frame: &[u8]) {
        self.write(&[frame]);
    }

    /// A frame in two parts (headers, then payload).
    pub fn frame_parts(&self, header: &[u8], payload: &[u8]) {
        self.write(&[header, payload]);
    }

    /// A datagram of a kernel socket, with made-up link-layer headers.
    pub fn datagram(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
        ecn: Option<EcnCodepoint>,
        payload: &[u8],
    ) {
        let route = FrameRoute {
            src_mac: EthernetAddress([0; 6]),
            dst_mac: EthernetAddress([0; 6]),
            vlan: None,
        };
        let mut header = [0u8; MAX_HEADER_LEN];
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        let (src, dst) = (canonical(src), canonical(dst));
        if src.is_ipv4() != dst.is_ipv4() {
            return;
        }
        let len = emit_udp_headers(&mut header, &route, src, dst, ecn, payload);
        self.write(&[&header[..len], payload]);
    }

    fn write(&self, parts: &[&[u8]]) {
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(w) = writer.as_mut() else {
            return;
        };
        let data: Vec<u8> = parts.concat();
        let record = PACKET_HEADER_LEN + data.len() as u64;
        if record > w.room {
            tracing::warn!("pcap capture stopped: the file reached its size limit");
            *writer = None;
            return;
        }
        w.room -= record;
        let since_epoch = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let packet = PcapPacket::new(since_epoch, data.len() as u32, &data);
        if let Err(e) = w.pcap.write_packet(&packet) {
            tracing::warn!(error = %e, "pcap capture stopped");
            *writer = None;
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let writer = self
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = writer.take() {
            let mut file = w.pcap.into_writer();
            if let Err(e) = io::Write::flush(&mut file) {
                tracing::warn!(error = %e, "flushing the pcap capture");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use pcap_file::pcap::PcapReader;

    use super::*;

    #[test]
    fn capture_stops_before_the_file_exceeds_its_limit() {
        let dir = std::env::temp_dir().join(format!("qx-capture-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("limited.pcap");
        // Room for the file header and two 100-byte frames, not three.
        let limit = PCAP_HEADER_LEN + 2 * (PACKET_HEADER_LEN + 100) + 50;
        let capture = Capture::create(&path, limit).unwrap();
        for _ in 0..5 {
            capture.frame(&[7; 100]);
        }
        drop(capture);
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(size, PCAP_HEADER_LEN + 2 * (PACKET_HEADER_LEN + 100));
        let mut reader = PcapReader::new(File::open(&path).unwrap()).unwrap();
        let mut frames = 0;
        while let Some(packet) = reader.next_packet() {
            assert_eq!(packet.unwrap().data.len(), 100);
            frames += 1;
        }
        assert_eq!(frames, 2);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
