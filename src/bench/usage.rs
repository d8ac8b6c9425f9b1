//! CPU time and resident memory of a process, read from Linux `/proc`.
//!
//! CPU time comes from two places. `/proc/<pid>/stat` (`utime`, `stime`) is complete (it counts
//! threads that have exited) but has clock-tick resolution (10 ms at the usual 100 ticks per
//! second); the sum of `/proc/<pid>/task/*/schedstat` run times has nanosecond resolution but
//! misses threads that exit between two readings. [`CpuTimes::since`] uses the precise sum unless
//! the tick count shows that it lost time. Elsewhere than Linux every reading is `None`.

/// One reading of a process's CPU time.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuTimes {
    /// Run time summed over the live threads (`schedstat`), in ns, when readable.
    precise_ns: Option<u64>,
    /// User time (`utime`), in ms (clock-tick resolution).
    user_ms: f64,
    /// System time (`stime`), in ms (clock-tick resolution).
    system_ms: f64,
    /// One clock tick, in ms.
    tick_ms: f64,
}

/// CPU time spent between two readings.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuDelta {
    /// User + system, in ms (ns resolution when `schedstat` could be used).
    pub total_ms: f64,
    /// User, in ms (clock-tick resolution).
    pub user_ms: f64,
    /// System, in ms (clock-tick resolution).
    pub system_ms: f64,
}

impl CpuTimes {
    /// The CPU time spent since `before`.
    pub(crate) fn since(&self, before: &CpuTimes) -> CpuDelta {
        let user_ms = (self.user_ms - before.user_ms).max(0.0);
        let system_ms = (self.system_ms - before.system_ms).max(0.0);
        let ticks_ms = user_ms + system_ms;
        let total_ms = match (self.precise_ns, before.precise_ns) {
            // A thread that exited took its run time with it: the tick count then shows more.
            (Some(now), Some(then))
                if ticks_ms - (now.saturating_sub(then) as f64 / 1e6) <= 2.0 * self.tick_ms =>
            {
                now.saturating_sub(then) as f64 / 1e6
            }
            _ => ticks_ms,
        };
        CpuDelta {
            total_ms,
            user_ms,
            system_ms,
        }
    }
}

/// This process's id, as `/proc` names it.
pub(crate) fn own_pid() -> i32 {
    i32::try_from(std::process::id()).unwrap_or(i32::MAX)
}

/// Reads the CPU time of process `pid`.
#[cfg(target_os = "linux")]
pub(crate) fn cpu(pid: i32) -> Option<CpuTimes> {
    let process = procfs::process::Process::new(pid).ok()?;
    let stat = process.stat().ok()?;
    let tick_ms = 1000.0 / procfs::ticks_per_second().max(1) as f64;
    // A thread may exit while we read; it is skipped (and [`CpuTimes::since`] notices).
    let precise_ns = process.tasks().ok().and_then(|tasks| {
        tasks
            .flatten()
            .filter_map(|task| task.schedstat().ok())
            .map(|s| s.sum_exec_runtime)
            .reduce(|a, b| a + b)
    });
    Some(CpuTimes {
        precise_ns,
        user_ms: stat.utime as f64 * tick_ms,
        system_ms: stat.stime as f64 * tick_ms,
        tick_ms,
    })
}

/// Reads the CPU time of process `pid` (not available on this platform).
#[cfg(not(target_os = "linux"))]
pub(crate) fn cpu(_pid: i32) -> Option<CpuTimes> {
    None
}

/// Resident memory of process `pid` now (`VmRSS`) and its lifetime peak (`VmHWM`), in bytes.
#[cfg(target_os = "linux")]
pub(crate) fn memory(pid: i32) -> Option<(u64, u64)> {
    let status = procfs::process::Process::new(pid).ok()?.status().ok()?;
    Some((status.vmrss? * 1024, status.vmhwm? * 1024))
}

/// Resident memory of process `pid` (not available on this platform).
#[cfg(not(target_os = "linux"))]
pub(crate) fn memory(_pid: i32) -> Option<(u64, u64)> {
    None
}

/// Samples a process's `VmRSS` in the background and keeps the largest value.
pub(crate) struct RssSampler {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    pid: i32,
}

impl RssSampler {
    /// Starts sampling `pid` every `every`.
    pub(crate) fn start(pid: i32, every: std::time::Duration) -> Self {
        use std::sync::atomic::Ordering;
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let max = peak.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Some((rss, _)) = memory(pid) {
                    max.fetch_max(rss, Ordering::Relaxed);
                }
            }
        });
        RssSampler { peak, task, pid }
    }

    /// Stops sampling (after one last sample); the largest `VmRSS` seen, in bytes.
    pub(crate) fn stop(self) -> u64 {
        use std::sync::atomic::Ordering;
        self.task.abort();
        if let Some((rss, _)) = memory(self.pid) {
            self.peak.fetch_max(rss, Ordering::Relaxed);
        }
        self.peak.load(Ordering::Relaxed)
    }
}
