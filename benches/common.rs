//! What the benchmarks share.

// Each benchmark uses a part of these helpers.
#![allow(dead_code)]

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

/// On-CPU time of this process's threads whose name starts with one of
/// `prefixes`, per thread (from /proc schedstat, nanosecond resolution).
#[derive(Debug, Clone, Default)]
pub struct ThreadCpu(std::collections::HashMap<u32, u64>);

impl ThreadCpu {
    pub fn sample(prefixes: &[&str]) -> Self {
        let mut out = std::collections::HashMap::new();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Self(out);
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let path = task.path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if !prefixes.iter().any(|p| comm.trim_end().starts_with(p)) {
                continue;
            }
            let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
            if let Some(ns) = stat.split_whitespace().next().and_then(|v| v.parse().ok()) {
                out.insert(tid, ns);
            }
        }
        Self(out)
    }

    /// CPU time used since `earlier` by the threads alive now (a thread
    /// born since counts from zero; one that exited meanwhile is lost,
    /// which on these servers is an idle blocking-pool thread).
    pub fn since(&self, earlier: &ThreadCpu) -> std::time::Duration {
        let ns = self
            .0
            .iter()
            .map(|(tid, &now)| now.saturating_sub(earlier.0.get(tid).copied().unwrap_or(0)))
            .sum();
        std::time::Duration::from_nanos(ns)
    }
}

/// "median (min-max)" of `v`, formatted with `decimals`.
pub fn spread(v: &[f64], decimals: usize) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{:.decimals$} ({:.decimals$}-{:.decimals$})",
        median(v.to_vec()),
        min,
        max
    )
}

/// The `q` quantile (0..=1) of `samples`, sorted here.
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

/// CPU time (user + system) of this process's children that have exited
/// and been waited for (getrusage RUSAGE_CHILDREN).
pub fn children_cpu() -> std::time::Duration {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage(RUSAGE_CHILDREN)");
    let tv = |t: nix::sys::time::TimeVal| {
        std::time::Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000)
    };
    tv(usage.user_time()) + tv(usage.system_time())
}

/// CPU time (user + system) process `pid` has used so far, all its
/// threads included (/proc/PID/stat, clock-tick resolution).
pub fn process_cpu(pid: u32) -> anyhow::Result<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow::anyhow!("bad stat"))? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(std::time::Duration::from_nanos(ticks * 1_000_000_000 / hz))
}
