//! Prometheus metrics of an endpoint ([`Endpoint::register_metrics`]):
//! every counter of [`Endpoint::stats`], read when scraped (nothing on the
//! hot path), and histograms of handshake durations and connection RTTs,
//! recorded once per connection.
//!
//! [`Endpoint::register_metrics`]: crate::Endpoint::register_metrics
//! [`Endpoint::stats`]: crate::Endpoint::stats

use std::time::Duration;

use datapath::{QueueKind, program::SteerReason};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType,
        counter::ConstCounter,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
};

use crate::EndpointStats;

/// Recorded by the engines, shared with the collector.
#[derive(Debug, Clone)]
pub(crate) struct Histograms {
    /// From the first Initial accepted to the handshake's completion.
    pub handshake: Histogram,
    /// A connection's smoothed RTT when it ends.
    pub rtt: Histogram,
}

impl Default for Histograms {
    fn default() -> Self {
        Self {
            // 0.5 ms .. ~8 s.
            handshake: Histogram::new(exponential_buckets(0.000_5, 2.0, 15)),
            // 50 us .. ~1.6 s.
            rtt: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
        }
    }
}

impl Histograms {
    pub fn handshake_done(&self, took: Duration) {
        self.handshake.observe(took.as_secs_f64());
    }

    pub fn connection_ended(&self, rtt: Duration) {
        self.rtt.observe(rtt.as_secs_f64());
    }
}

/// What a scrape reads: a snapshot of the endpoint's counters, taken
/// then, and the histograms. `stats` gives `None` once the endpoint is
/// gone; the scrape then has only the histograms.
pub(crate) struct EndpointCollector<F> {
    pub stats: F,
    pub histograms: Histograms,
}

impl<F> std::fmt::Debug for EndpointCollector<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointCollector").finish_non_exhaustive()
    }
}

type Labels = Vec<(&'static str, String)>;

impl<F> Collector for EndpointCollector<F>
where
    F: Fn() -> Option<EndpointStats> + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        histogram(
            &mut encoder,
            "quic_xdp_handshake_duration_seconds",
            "Time from accepting a connection's first Initial to the handshake's completion",
            &self.histograms.handshake,
        )?;
        histogram(
            &mut encoder,
            "quic_xdp_connection_rtt_seconds",
            "Smoothed round-trip time of connections when they end",
            &self.histograms.rtt,
        )?;
        let Some(stats) = (self.stats)() else {
            return Ok(());
        };
        gauge(
            &mut encoder,
            "quic_xdp_connections_open",
            "Connections open now",
            stats.open_connections as i64,
        )?;
        gauge(
            &mut encoder,
            "quic_xdp_connection_attempts_waiting",
            "Connection attempts waiting for the application's accept",
            stats.waiting_attempts as i64,
        )?;
        gauge(
            &mut encoder,
            "quic_xdp_connection_attempts_undecided",
            "Connection attempts handed to the application and not yet decided",
            stats.undecided_attempts as i64,
        )?;
        let a = stats.admission;
        for (name, help, value) in [
            (
                "quic_xdp_connections_accepted",
                "Connections accepted",
                a.accepted,
            ),
            (
                "quic_xdp_connections_refused",
                "Connection attempts refused (limit, draining, closing, application)",
                a.refused,
            ),
            (
                "quic_xdp_connections_retried",
                "Connection attempts answered with a Retry",
                a.retried,
            ),
            (
                "quic_xdp_forwarded_datagrams",
                "Datagrams received by one engine for a connection another owns",
                a.forwarded,
            ),
            (
                "quic_xdp_forward_dropped_datagrams",
                "Such datagrams dropped because the owner's inbox was full",
                a.forward_dropped,
            ),
            (
                "quic_xdp_initials_shed",
                "Datagrams with a QUIC Initial dropped unread: Initials had used up their share of the engine's time",
                a.initials_shed,
            ),
        ] {
            counter(&mut encoder, name, help, &[(Vec::new(), value)])?;
        }
        datapath_counters(&mut encoder, &stats.queues)?;
        if let Some(steering) = stats.steering {
            let verdicts: Vec<(Labels, u64)> = SteerReason::ALL
                .iter()
                .map(|r| (vec![("reason", r.name().to_string())], steering.get(*r)))
                .collect();
            counter(
                &mut encoder,
                "quic_xdp_xdp_verdicts",
                "Frames the XDP program decided on, by verdict and reason",
                &verdicts,
            )?;
        }
        Ok(())
    }
}

/// One family per datapath counter, a series per queue.
fn datapath_counters(
    encoder: &mut DescriptorEncoder<'_>,
    queues: &[(QueueKind, datapath::counters::CounterSnapshot)],
) -> std::fmt::Result {
    let Some((_, first)) = queues.first() else {
        return Ok(());
    };
    let labels: Vec<Labels> = queues.iter().map(|(kind, _)| queue_labels(kind)).collect();
    for (i, (field, _)) in first.fields().iter().enumerate() {
        let series: Vec<(Labels, u64)> = queues
            .iter()
            .zip(&labels)
            .map(|((_, c), l)| (l.clone(), c.fields()[i].1))
            .collect();
        let name = format!("quic_xdp_datapath_{field}");
        let help = format!("Datapath counter {field}, per queue");
        if *field == "frames_in_use" {
            let mut family = encoder.encode_descriptor(&name, &help, None, MetricType::Gauge)?;
            for (l, v) in &series {
                ConstGauge::new(*v as i64).encode(family.encode_family(l)?)?;
            }
        } else {
            counter(encoder, &name, &help, &series)?;
        }
    }
    Ok(())
}

fn queue_labels(kind: &QueueKind) -> Labels {
    match kind {
        QueueKind::Xsk {
            interface, queue, ..
        } => vec![
            ("kind", "xsk".into()),
            ("queue", format!("{interface}/{queue}")),
        ],
        QueueKind::Udp { local } => vec![("kind", "udp".into()), ("queue", local.to_string())],
        QueueKind::SteeringMiss { local } => vec![
            ("kind", "steering_miss".into()),
            ("queue", local.to_string()),
        ],
    }
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    match series {
        [(labels, value)] if labels.is_empty() => ConstCounter::new(*value).encode(family),
        _ => {
            for (labels, value) in series {
                ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
            }
            Ok(())
        }
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> std::fmt::Result {
    let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(family)
}

fn histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    histogram: &Histogram,
) -> std::fmt::Result {
    let family = encoder.encode_descriptor(name, help, None, histogram.metric_type())?;
    histogram.encode(family)
}
