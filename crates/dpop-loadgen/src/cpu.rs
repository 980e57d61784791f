//! CPU time and context switches of a process, from `/proc` (Linux): what
//! `run --cpu-pid` samples at the edges of the timed phase.

use std::fs;

use anyhow::{Context as _, bail};

/// `AT_CLKTCK` in the auxiliary vector: the unit of the times in `/proc/PID/stat`.
const AT_CLKTCK: u64 = 17;

/// Clock ticks per second (what `getconf CLK_TCK` prints), read from the process's
/// auxiliary vector so no libc call is needed.
pub(crate) fn ticks_per_second() -> anyhow::Result<u64> {
    let auxv = fs::read("/proc/self/auxv").context("reading /proc/self/auxv")?;
    let word = size_of::<usize>();
    let words: Vec<u64> = auxv
        .chunks_exact(word)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..word].copy_from_slice(c);
            u64::from_ne_bytes(b)
        })
        .collect();
    for pair in words.chunks_exact(2) {
        match (pair[0], pair[1]) {
            (0, _) => break,
            (AT_CLKTCK, hz) if hz > 0 => return Ok(hz),
            _ => {}
        }
    }
    bail!("/proc/self/auxv has no AT_CLKTCK")
}

/// User plus system time of process `pid` so far, in clock ticks (`utime` + `stime`,
/// fields 14 and 15 of `/proc/PID/stat`; its threads included, reaped children not).
pub(crate) fn process_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat(&stat).with_context(|| format!("{path}: unexpected format"))
}

/// User plus system time so far of every process in `pids`, summed, in clock ticks
/// (each process's own time: list children separately). A process that cannot be read
/// (gone, say) is an error, never a smaller sum.
pub(crate) fn processes_ticks(pids: &[u32]) -> anyhow::Result<u64> {
    sum_ticks(pids, process_ticks)
}

fn sum_ticks(pids: &[u32], ticks: impl Fn(u32) -> anyhow::Result<u64>) -> anyhow::Result<u64> {
    pids.iter().try_fold(0u64, |sum, &pid| {
        sum.checked_add(ticks(pid)?).context("CPU ticks overflow")
    })
}

/// Context switches of a process's threads so far: the sums over `/proc/PID/task/*/status`
/// (`voluntary_ctxt_switches`, `nonvoluntary_ctxt_switches`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Switches {
    /// The thread gave up the CPU itself: it waited (for I/O, a lock, a timer).
    pub(crate) voluntary: u64,
    /// The scheduler took the CPU from a thread that could have run on: another task
    /// (a peer woken by a write, say) was put on its CPU.
    pub(crate) involuntary: u64,
}

impl Switches {
    /// The switches from `earlier` to `self`, counter by counter (never below zero: a
    /// thread that ended in between takes its counts with it).
    pub(crate) fn since(self, earlier: Self) -> Self {
        Self {
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            involuntary: self.involuntary.saturating_sub(earlier.involuntary),
        }
    }

    fn checked_add(self, other: Self) -> Option<Self> {
        Some(Self {
            voluntary: self.voluntary.checked_add(other.voluntary)?,
            involuntary: self.involuntary.checked_add(other.involuntary)?,
        })
    }
}

/// The context switches of process `pid`'s threads that are alive now. The kernel keeps
/// no per-process total another process can read, so a thread that ended takes its
/// counts with it: over a phase in which threads end, the difference undercounts.
pub(crate) fn process_switches(pid: u32) -> anyhow::Result<Switches> {
    let dir = format!("/proc/{pid}/task");
    let mut sum = Switches::default();
    for task in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = task
            .with_context(|| format!("reading {dir}"))?
            .path()
            .join("status");
        let status = match fs::read_to_string(&path) {
            Ok(s) => s,
            // The thread ended after the directory was read: it has no counts to add.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let own = parse_switches(&status)
            .with_context(|| format!("{}: no context switch counts", path.display()))?;
        sum = sum
            .checked_add(own)
            .context("context switch count overflow")?;
    }
    Ok(sum)
}

/// [`process_switches`] of every process in `pids`, summed.
pub(crate) fn processes_switches(pids: &[u32]) -> anyhow::Result<Switches> {
    pids.iter().try_fold(Switches::default(), |sum, &pid| {
        sum.checked_add(process_switches(pid)?)
            .context("context switch count overflow")
    })
}

fn parse_switches(status: &str) -> Option<Switches> {
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .trim()
            .parse()
            .ok()
    };
    Some(Switches {
        voluntary: field("voluntary_ctxt_switches")?,
        involuntary: field("nonvoluntary_ctxt_switches")?,
    })
}

fn parse_stat(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces or ')': the
    // fields after the last ')' start at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_fields() {
        let status = "Name:\tdpop\nState:\tS (sleeping)\nvoluntary_ctxt_switches:\t1234\n\
                      nonvoluntary_ctxt_switches:\t56\n";
        assert_eq!(
            parse_switches(status),
            Some(Switches {
                voluntary: 1234,
                involuntary: 56
            })
        );
        assert_eq!(parse_switches("voluntary_ctxt_switches:\t1\n"), None);
        assert_eq!(
            parse_switches("voluntary_ctxt_switches:\tx\nnonvoluntary_ctxt_switches:\t2\n"),
            None,
            "a count that is not a number"
        );
    }

    #[test]
    fn switches_since_never_go_below_zero() {
        let later = Switches {
            voluntary: 10,
            involuntary: 3,
        };
        let earlier = Switches {
            voluntary: 4,
            involuntary: 5,
        };
        assert_eq!(
            later.since(earlier),
            Switches {
                voluntary: 6,
                involuntary: 0
            }
        );
    }

    #[test]
    fn this_process_switches_are_read() {
        let before = process_switches(std::process::id()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let after = process_switches(std::process::id()).unwrap();
        assert!(
            after.since(before).voluntary >= 1,
            "a sleep is a voluntary switch: {before:?} -> {after:?}"
        );
        assert!(process_switches(u32::MAX).is_err(), "no such process");
    }

    #[test]
    fn stat_fields() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 1 0 0 0 1234 56 0 0 20 0 3 0 9 1 2";
        assert_eq!(parse_stat(stat), Some(1290));
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
        assert_eq!(
            parse_stat("1 (x) S 1 1 1 0 -1 0 0 0 0 0 u 5 0"),
            None,
            "a field that is not a number"
        );
    }

    #[test]
    fn ticks_summed_over_processes() {
        let ticks = |pid: u32| match pid {
            1 => Ok(10),
            2 => Ok(32),
            3 => Ok(u64::MAX),
            _ => bail!("no process {pid}"),
        };
        assert_eq!(sum_ticks(&[], ticks).unwrap(), 0);
        assert_eq!(sum_ticks(&[1], ticks).unwrap(), 10);
        assert_eq!(sum_ticks(&[1, 2], ticks).unwrap(), 42);
        let e = sum_ticks(&[1, 4, 2], ticks).unwrap_err();
        assert!(e.to_string().contains("no process 4"), "{e}");
        assert!(sum_ticks(&[1, 3], ticks).is_err(), "overflow");
        // The real reader: this process counted twice is twice its ticks or more.
        let me = std::process::id();
        let one = processes_ticks(&[me]).unwrap();
        assert!(processes_ticks(&[me, me]).unwrap() >= 2 * one);
    }

    #[test]
    fn own_process() {
        let hz = ticks_per_second().unwrap();
        assert!((1..=10_000).contains(&hz), "{hz}");
        // Burn some CPU and see the tick count move (at 100 Hz, 10 ms per tick).
        let before = process_ticks(std::process::id()).unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = process_ticks(std::process::id()).unwrap();
        assert!(after > before, "{before} -> {after}");
    }
}
