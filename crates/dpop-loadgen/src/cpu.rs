//! CPU time and context switches of a process, from `/proc` (Linux): what
//! `run --cpu-pid` samples at the edges of the timed phase.

use std::collections::BTreeMap;
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

/// Context switches: how often threads gave up their CPU, or had it taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Switches {
    /// The thread gave up the CPU itself: it waited (for I/O, a lock, a timer).
    pub(crate) voluntary: u64,
    /// The scheduler took the CPU from a thread that could have run on: another task
    /// (a peer woken by a write, say) was put on its CPU.
    pub(crate) involuntary: u64,
}

impl Switches {
    /// Counter by counter, never below zero.
    fn saturating_sub(self, earlier: Self) -> Self {
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

/// The counts of each thread of some processes at one instant, by thread id (ids are
/// unique across processes), from `/proc/PID/task/TID/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ThreadSwitches(BTreeMap<u32, Switches>);

impl ThreadSwitches {
    /// The switches made between `earlier` and `self`, thread by thread: a thread alive at
    /// both instants counts its increase, one started in between all its counts. The
    /// kernel keeps no per-process total that another process can read, so a thread that
    /// ended in between takes the switches it made in between with it (an undercount,
    /// never a subtraction from the others).
    pub(crate) fn since(&self, earlier: &Self) -> anyhow::Result<Switches> {
        self.0
            .iter()
            .try_fold(Switches::default(), |sum, (tid, now)| {
                let before = earlier.0.get(tid).copied().unwrap_or_default();
                sum.checked_add(now.saturating_sub(before))
                    .context("context switch count overflow")
            })
    }
}

/// `ESRCH`: what reading a thread's status file gives once the thread has ended, when the
/// file was opened before (opening it after gives `ENOENT`).
const ESRCH: i32 = 3;

/// Adds the counts of each of process `pid`'s live threads to `into`.
fn read_threads(pid: u32, into: &mut ThreadSwitches) -> anyhow::Result<()> {
    let dir = format!("/proc/{pid}/task");
    for task in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let task = task.with_context(|| format!("reading {dir}"))?;
        // Entries are thread ids; anything else is not a thread.
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let path = task.path().join("status");
        let status = match fs::read_to_string(&path) {
            Ok(s) => s,
            // The thread ended after the directory was read: it has no counts now.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if e.raw_os_error() == Some(ESRCH) => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let own = parse_switches(&status)
            .with_context(|| format!("{}: no context switch counts", path.display()))?;
        into.0.insert(tid, own);
    }
    Ok(())
}

/// The context switches so far of every live thread of the processes in `pids`. A
/// process that cannot be read (gone, say) is an error.
pub(crate) fn processes_switches(pids: &[u32]) -> anyhow::Result<ThreadSwitches> {
    let mut all = ThreadSwitches::default();
    for &pid in pids {
        read_threads(pid, &mut all)?;
    }
    Ok(all)
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
        // Whatever the order of the lines, each field is read by its own name.
        assert_eq!(
            parse_switches("nonvoluntary_ctxt_switches:\t9\nvoluntary_ctxt_switches:\t4\n"),
            Some(Switches {
                voluntary: 4,
                involuntary: 9
            })
        );
        assert_eq!(parse_switches("voluntary_ctxt_switches:\t1\n"), None);
        assert_eq!(
            parse_switches("nonvoluntary_ctxt_switches:\t1\n"),
            None,
            "the voluntary count missing"
        );
        assert_eq!(
            parse_switches("voluntary_ctxt_switches:\tx\nnonvoluntary_ctxt_switches:\t2\n"),
            None,
            "a count that is not a number"
        );
    }

    fn sample(threads: &[(u32, u64, u64)]) -> ThreadSwitches {
        ThreadSwitches(
            threads
                .iter()
                .map(|&(tid, voluntary, involuntary)| {
                    (
                        tid,
                        Switches {
                            voluntary,
                            involuntary,
                        },
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn switches_are_counted_thread_by_thread() {
        let start = sample(&[(10, 100, 7), (11, 50, 2), (12, 900, 90)]);
        // 10 went on, 11 ended (its history must not be taken from the others), 13 began,
        // and 12's counts cannot go down (an id reused by a new thread, say).
        let end = sample(&[(10, 104, 9), (12, 5, 1), (13, 3, 1)]);
        assert_eq!(
            end.since(&start).unwrap(),
            Switches {
                voluntary: 7,
                involuntary: 3
            }
        );
        assert_eq!(
            start.since(&start).unwrap(),
            Switches::default(),
            "no switches between a sample and itself"
        );
    }

    #[test]
    fn this_process_switches_are_read() {
        let me = std::process::id();
        let before = processes_switches(&[me]).unwrap();
        // Threads that end meanwhile (other tests') take only their own counts along.
        std::thread::sleep(std::time::Duration::from_millis(5));
        let after = processes_switches(&[me]).unwrap();
        assert!(
            after.since(&before).unwrap().voluntary >= 1,
            "a sleep is a voluntary switch: {before:?} -> {after:?}"
        );
        assert!(processes_switches(&[u32::MAX]).is_err(), "no such process");
        assert!(
            processes_switches(&[me, u32::MAX]).is_err(),
            "one process missing is an error, not a smaller sum"
        );
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
