//! How the example servers are stopped.

/// Waits for Ctrl-C, SIGTERM or, if given, `duration` seconds.
pub async fn until_stopped(duration: Option<f64>) -> anyhow::Result<()> {
    let deadline = async {
        match duration {
            Some(s) => tokio::time::sleep(std::time::Duration::from_secs_f64(s)).await,
            None => std::future::pending().await,
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = deadline => {}
    }
    Ok(())
}
