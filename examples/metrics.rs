//! `--metrics ADDR`: the endpoint's Prometheus metrics over HTTP, at
//! GET /metrics, in the OpenMetrics text format.

use std::sync::Arc;

use axum::{Router, http::header, routing::get};
use quic_xdp::{
    Endpoint,
    prometheus_client::{encoding::text::encode, registry::Registry},
};

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `endpoint`'s metrics on `listener` until the process ends. Runs
/// on the caller's runtime: with `--user`, the main thread is the one that
/// may still read the XDP verdicts.
pub fn serve(listener: std::net::TcpListener, endpoint: &Endpoint) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    endpoint.register_metrics(&mut registry);
    let registry = Arc::new(registry);
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut body = String::new();
                match encode(&mut body, &registry) {
                    Ok(()) => Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], body)),
                    Err(_) => Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
                }
            }
        }),
    );
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}
