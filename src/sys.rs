//! Process set-up that a server holding many long-lived sockets needs.

/// Raises this process's soft open-file limit (`RLIMIT_NOFILE`) to its hard limit, so that one
/// box can hold as many calls (one socket each, two while a turn talks to the model) as its
/// memory allows instead of the distribution's default soft limit (often 1,024). Returns the
/// soft limit now in force; `None` where the platform has no such limit or it cannot be read.
///
/// Source: `getrlimit(2)`/`setrlimit(2)`; through the `rlimit` crate (no unsafe code here).
pub fn raise_open_file_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}
