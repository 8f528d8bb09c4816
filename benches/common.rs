//! What the benchmarks share.

/// The middle value (upper middle for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The benchmarks create network namespaces and attach XDP.
pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("this benchmark needs root: it creates network namespaces and attaches XDP");
    }
    Ok(())
}
