//! A UDP echo over any set of datapath queues: what `xdp-udp-echo` runs,
//! and the smallest complete user of [`PacketIo`]: receive a batch, answer
//! from the address each datagram was sent to (as GSO batches where the
//! replies allow), flush.

use std::{
    io,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use crate::io::{PacketIo, RxMeta, Transmit, send_or_through_kernel, wait_readable};

/// How long to keep retrying a reply while the tx ring drains.
const TX_RETRY_FOR: Duration = Duration::from_millis(50);
const POLL_EVERY: Duration = Duration::from_millis(20);

/// What an echo run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EchoOutcome {
    /// Datagrams answered.
    pub echoed: u64,
    /// Replies that could not be sent (ring stayed full, no route).
    pub dropped: u64,
}

/// When `serve` stops on its own; no limit by default.
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoLimits {
    /// Stop after answering this many datagrams.
    pub count: Option<u64>,
    /// Stop at this instant.
    pub deadline: Option<Instant>,
}

/// Echoes until `stop` is set or a limit is reached.
pub fn serve(
    queues: &mut [Box<dyn PacketIo>],
    stop: &AtomicBool,
    limits: EchoLimits,
) -> io::Result<EchoOutcome> {
    let mut outcome = EchoOutcome::default();
    // Replies of one batch: metadata and payload ranges into one buffer.
    let mut replies: Vec<(RxMeta, std::ops::Range<usize>)> = Vec::new();
    let mut payloads: Vec<u8> = Vec::new();
    loop {
        let done = stop.load(Ordering::Relaxed)
            || limits.count.is_some_and(|c| outcome.echoed >= c)
            || limits.deadline.is_some_and(|d| Instant::now() >= d);
        if done {
            for q in queues.iter_mut() {
                q.flush()?;
                q.refresh_counters();
            }
            return Ok(outcome);
        }
        let mut idle = true;
        for qi in 0..queues.len() {
            replies.clear();
            payloads.clear();
            let n = queues[qi].recv(&mut |meta, data| {
                let start = payloads.len();
                payloads.extend_from_slice(data);
                replies.push((*meta, start..payloads.len()));
            })?;
            idle &= n == 0;
            // Consecutive replies to one peer, of one size (the last may be
            // shorter), leave as one GSO batch: their payloads are adjacent.
            let max_segments = queues[qi].max_segments().max(1);
            let mut i = 0;
            while i < replies.len() {
                let (meta, first) = &replies[i];
                let size = first.len();
                let mut end = i + 1;
                while end < replies.len()
                    && end - i < max_segments
                    && replies[end].0 == *meta
                    && replies[end].1.len() <= size
                    && replies[end - 1].1.len() == size
                    && size > 0
                {
                    end += 1;
                }
                let count = (end - i) as u64;
                let t = Transmit {
                    destination: meta.remote,
                    ecn: meta.ecn,
                    contents: &payloads[first.start..replies[end - 1].1.end],
                    segment_size: (count > 1).then_some(size),
                    src_ip: Some(meta.local.ip()),
                };
                match send_with_retry(queues, qi, &t) {
                    Ok(()) => outcome.echoed += count,
                    Err(e) => {
                        tracing::debug!(error = %e, peer = %meta.remote, "echo reply dropped");
                        outcome.dropped += count;
                    }
                }
                i = end;
            }
            for q in queues.iter_mut() {
                q.flush()?;
            }
        }
        if idle {
            wait_readable(queues, POLL_EVERY)?;
        }
    }
}

fn send_with_retry(
    queues: &mut [Box<dyn PacketIo>],
    qi: usize,
    t: &Transmit<'_>,
) -> io::Result<()> {
    let mut deadline = None;
    loop {
        match send_or_through_kernel(queues, qi, t) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let d = *deadline.get_or_insert_with(|| Instant::now() + TX_RETRY_FOR);
                if Instant::now() >= d {
                    return Err(e);
                }
                queues[qi].flush()?;
                std::thread::yield_now();
            }
            other => return other,
        }
    }
}
