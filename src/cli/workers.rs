//! How many inference workers `serve` and `infer` run, and what each one's models are: with
//! `inference.workers` unset, a rule on the device, the cores and the memory ([`workers_for`]).
//! On the CPU each worker has sessions of its own (their runs go side by side on the cores); on
//! a GPU the workers share one set ([`Analyser::share`]) and take turns on the device.

use pneumotriage::config::Config;
use pneumotriage::inference::analyse::Analyser;

/// How many workers, and why (for the log): `inference.workers`, else [`workers_for`] on the
/// models' files (of every analyser a worker holds), the cores and the memory available.
pub fn count(config: &Config, analysers: &[&Analyser]) -> (usize, String) {
    if let Some(n) = config.inference.workers {
        return (n, format!("inference.workers = {n}"));
    }
    let model_bytes: u64 = analysers
        .iter()
        .flat_map(|a| a.manifest.models.iter().map(|m| a.manifest.path_of(m)))
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|m| m.len())
        .sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let on_gpu = analysers.first().is_some_and(|a| a.on_gpu());
    let (n, why) = workers_for(on_gpu, config.inference.threads, model_bytes, cores, available_memory());
    (n, format!("inference.workers is unset: {why}"))
}

/// Each worker's models, `count` in all: the first's as opened, then the others' sharing its
/// sessions on a GPU (`share`), else opened and warmed up anew (`open`).
pub fn each<M, E>(
    first: M,
    count: usize,
    on_gpu: bool,
    share: fn(&M) -> M,
    mut open: impl FnMut() -> Result<M, E>,
) -> Result<Vec<M>, E> {
    let mut workers = Vec::with_capacity(count);
    workers.push(first);
    while workers.len() < count {
        let next = if on_gpu { share(&workers[0]) } else { open()? };
        workers.push(next);
    }
    Ok(workers)
}

/// The rule: on the CPU a second worker runs its models while the first prepares and finishes
/// its batch (a backlog drains about a fifth faster on 2 cores, docs/benchmarks.md), at twice
/// the models' memory. Two where `threads` x 2 fits in the cores and the memory holds both
/// workers' sessions with room to spare (a session holds about its model file twice over; four
/// times is asked, plus 512 MiB); else one. On a GPU two, sharing one set of sessions (no more
/// memory on the device): one worker's batch runs on the GPU while the other reads, prepares,
/// finishes and records its own, where one worker alone leaves the GPU idle between batches.
fn workers_for(
    on_gpu: bool,
    threads: usize,
    model_bytes: u64,
    cores: usize,
    available: Option<u64>,
) -> (usize, String) {
    if on_gpu {
        return (2, "2 workers sharing the models on the GPU, one batch on it while the other is prepared".into());
    }
    if threads * 2 > cores {
        return (
            1,
            format!(
                "1 worker: two of {threads} thread(s) (inference.threads) would take more than the {cores} core(s)"
            ),
        );
    }
    let needed = 4 * model_bytes + (512 << 20);
    let mib = |bytes: u64| bytes >> 20;
    match available {
        Some(available) if available >= 2 * needed => (
            2,
            format!(
                "2 workers ({cores} cores, {} MiB of memory available, {} MiB of model files per worker)",
                mib(available),
                mib(model_bytes)
            ),
        ),
        Some(available) => (
            1,
            format!(
                "1 worker: {} MiB of memory available is too little for a second worker's models ({} MiB of files)",
                mib(available),
                mib(model_bytes)
            ),
        ),
        None => (1, "1 worker: the available memory cannot be read (/proc/meminfo)".into()),
    }
}

/// The memory this process may still use, in bytes: the system's MemAvailable, or less where
/// the node's cgroup (a systemd `MemoryMax`, a container's limit) leaves less.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    let system = kib * 1024;
    Some(cgroup_headroom().map_or(system, |left| left.min(system)))
}

/// memory.max less memory.current of this process's cgroup (v2); None where it has no limit.
fn cgroup_headroom() -> Option<u64> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = membership.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim().trim_start_matches('/'));
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok()?.trim().parse::<u64>().ok();
    // "max" (no limit) does not parse
    let max = read("memory.max")?;
    Some(max.saturating_sub(read("memory.current").unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn two_workers_where_the_cores_and_the_memory_allow() {
        // the demo models (a few MiB) on a 2-core machine with memory to spare
        let (n, why) = workers_for(false, 1, 5 << 20, 2, Some(8 * GIB));
        assert_eq!(n, 2, "{why}");
        assert!(why.contains("2 cores"), "{why}");
    }

    #[test]
    fn one_worker_where_the_threads_take_the_cores() {
        let (n, why) = workers_for(false, 2, 5 << 20, 2, Some(8 * GIB));
        assert_eq!(n, 1);
        assert!(why.contains("inference.threads"), "{why}");
        assert_eq!(workers_for(false, 1, 5 << 20, 1, Some(8 * GIB)).0, 1, "one core");
    }

    #[test]
    fn one_worker_where_the_memory_would_not_hold_two() {
        // full-size models (about 300 MiB of files) need 2 x (4 x 300 + 512) MiB
        let models = 300 << 20;
        assert_eq!(workers_for(false, 1, models, 4, Some(3 * GIB)).0, 1);
        assert_eq!(workers_for(false, 1, models, 4, Some(4 * GIB)).0, 2);
        let (n, why) = workers_for(false, 1, models, 4, None);
        assert_eq!(n, 1);
        assert!(why.contains("cannot be read"), "{why}");
    }

    #[test]
    fn two_workers_sharing_a_gpu() {
        // whatever the threads and the memory: the second worker adds no session
        let (n, why) = workers_for(true, 16, 800 << 20, 16, None);
        assert_eq!(n, 2);
        assert!(why.contains("sharing"), "{why}");
    }
}
