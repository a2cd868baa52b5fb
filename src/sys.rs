//! Process facts and settings for the server and the load generator: the
//! open-file limit (each connection is a descriptor), how much freed heap
//! glibc keeps (fan-out allocates per burst), the bench's own CPU time (it
//! shares the machine with the server it measures) and the server's memory
//! and CPU time read from /proc.

use std::io;

/// The RLIMIT_NOFILE soft limit after [`raise_nofile`], and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct NoFile {
    pub before: u64,
    pub now: u64,
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard one: many connections need
/// many descriptors, and only the hard limit is a real ceiling.
pub fn raise_nofile() -> io::Result<NoFile> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = r.rlim_cur;
    let mut target = r.rlim_max;
    if target == libc::RLIM_INFINITY {
        // The kernel refuses "infinity" for NOFILE; nr_open is its real cap.
        target = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if r.rlim_cur < target {
        let new = libc::rlimit { rlim_cur: target, rlim_max: r.rlim_max };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            return Err(io::Error::last_os_error());
        }
        r.rlim_cur = target;
    }
    Ok(NoFile { before, now: r.rlim_cur, hard: r.rlim_max })
}

/// How much freed memory glibc may keep before it gives the top of the heap
/// back to the kernel (its default is 128 KiB).
#[cfg(target_env = "gnu")]
const KEEP_FREED: libc::c_int = 16 << 20;

/// Lets glibc keep up to 16 MiB of freed heap. Fan-out allocates and frees
/// each subscriber's queue of frames once per burst: with glibc's default,
/// that memory went back to the kernel and was faulted in again every burst
/// (about 130,000 page faults per 20 M deliveries; 1,000-2,000 with this),
/// for 3-5 % of the server's CPU. Idle connections cost the same either way.
pub fn keep_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets one of glibc's tunables.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREED);
    }
}

/// User + system CPU seconds used by this process so far.
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is a valid value; getrusage fills it in.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer cannot fail.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Resident memory of `pid` in KiB (VmRSS), if the process is readable.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()
}

/// User + system CPU seconds used by `pid` (all its threads) so far.
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'. utime and stime are fields 14 and 15 overall.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| (utime + stime) as f64 / hz as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|k| k > 0));
        assert!(proc_cpu_seconds(me).is_some());
        assert!(own_cpu_seconds() >= 0.0);
        let l = raise_nofile().expect("rlimit");
        assert!(l.now >= l.before);
    }
}
