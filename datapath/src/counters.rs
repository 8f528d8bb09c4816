//! Per-queue datapath counters: atomics written by the queue's thread and
//! readable from any other, plus a plain snapshot for reports.

use std::{
    fmt,
    ops::AddAssign,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Live counters of one queue.
        #[derive(Debug, Default)]
        pub struct QueueCounters {
            $( $(#[$doc])* pub $name: AtomicU64, )*
        }

        /// Counter values at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct CounterSnapshot {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl QueueCounters {
            /// The counter values now.
            pub fn snapshot(&self) -> CounterSnapshot {
                CounterSnapshot { $( $name: self.$name.load(Relaxed), )* }
            }
        }

        impl AddAssign for CounterSnapshot {
            fn add_assign(&mut self, other: Self) {
                $( self.$name += other.$name; )*
            }
        }

        impl CounterSnapshot {
            /// (name, value) pairs in declaration order.
            pub fn fields(&self) -> [(&'static str, u64); counters!(@count $($name)*)] {
                [ $( (stringify!($name), self.$name), )* ]
            }
        }
    };
    (@count) => { 0 };
    (@count $head:ident $($tail:ident)*) => { 1 + counters!(@count $($tail)*) };
}

counters! {
    /// Datagrams received and delivered.
    rx_packets,
    /// UDP payload bytes received and delivered.
    rx_bytes,
    /// Datagrams queued for transmission.
    tx_packets,
    /// UDP payload bytes queued for transmission.
    tx_bytes,
    /// Frames steered to us that did not decode as UDP/IP.
    rx_malformed,
    /// IPv4 header or UDP checksum mismatches.
    rx_bad_checksum,
    /// Datagrams that reached the kernel socket while XDP was steering.
    steering_misses,
    /// Datagrams a kernel socket dropped: their source is refused by the
    /// source policy (the XDP program counts those it drops itself).
    rx_source_denied,
    /// Sends refused because no frame or ring slot was free (retried).
    tx_ring_full,
    /// sendto(2) calls that told the kernel to transmit the AF_XDP tx ring.
    tx_kicks,
    /// Kicks that left frames on the tx ring because the kernel was busy
    /// (EBUSY/ENOBUFS, or EAGAIN without progress): sent on a later kick.
    tx_kick_busy,
    /// Sends this queue could not address: no route through the interface,
    /// or the next hop not resolved yet (the kernel is asked to resolve
    /// it). `send_or_through_kernel` hands them to the kernel socket.
    tx_no_neighbor,
    /// Sends dropped: larger than the interface MTU allows.
    tx_too_big,
    /// Kernel: frames dropped because the rx ring was full.
    rx_ring_full,
    /// Kernel: frames that found the fill ring empty (also in rx_dropped).
    fill_ring_empty,
    /// Kernel: frames dropped for want of a buffer, or too big for one.
    rx_dropped,
    /// Gauge, not a counter: UMEM frames away from their pool at the last
    /// flush (sent and not completed, received and not yet refilled). Flat
    /// under steady load; 0 when idle.
    frames_in_use,
    /// Kernel: invalid descriptors on the rx / tx rings.
    rx_invalid_descs,
    /// Kernel: invalid descriptors on the tx ring.
    tx_invalid_descs,
}

impl QueueCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}

impl fmt::Display for CounterSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, value) in self.fields() {
            // Zero error counters are noise; the traffic counters always show.
            if value == 0 && !name.ends_with("packets") && !name.ends_with("bytes") {
                continue;
            }
            if !first {
                f.write_str(" ")?;
            }
            write!(f, "{name}={value}")?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_add_and_print_nonzero_errors_only() {
        let c = QueueCounters::default();
        QueueCounters::add(&c.rx_packets, 3);
        QueueCounters::add(&c.rx_ring_full, 2);
        let mut total = c.snapshot();
        total += c.snapshot();
        assert_eq!(total.rx_packets, 6);
        assert_eq!(
            total.to_string(),
            "rx_packets=6 rx_bytes=0 tx_packets=0 tx_bytes=0 rx_ring_full=4"
        );
    }
}
