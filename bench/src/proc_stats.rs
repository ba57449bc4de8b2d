//! Process figures from /proc: peak RSS and CPU time.

/// Peak resident set size of a process in MiB (`VmHWM`).
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// User plus system CPU seconds a process has used.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Pids of processes whose command name is `name`.
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name))
        .collect()
}

/// CPU seconds of every process with one of `names`.
pub fn cpu_of(names: &[&str]) -> f64 {
    names.iter().flat_map(|n| pids_named(n)).filter_map(cpu_seconds).sum()
}

/// The machine's busy and total CPU ticks since boot (`/proc/stat`, all CPUs).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    // idle and iowait are the 4th and 5th fields.
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    let total: u64 = ticks.iter().sum();
    Some((total - idle, total))
}

/// The fraction of the machine's CPU in use over the next `window`.
pub async fn busy_over(window: std::time::Duration) -> Option<f64> {
    let (busy_before, total_before) = machine_ticks()?;
    tokio::time::sleep(window).await;
    let (busy, total) = machine_ticks()?;
    Some((busy - busy_before) as f64 / (total - total_before).max(1) as f64)
}

/// Waits until the machine is nearly idle (under `threshold` busy over two seconds), so that a
/// half of a benchmark does not share the CPU with the cleanup of the one before it (the
/// namespace controller and the network policy enforcer keep working after the namespaces
/// are gone). Gives up after `limit`, saying so.
pub async fn settle(threshold: f64, limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let Some(busy) = busy_over(std::time::Duration::from_secs(2)).await else { return };
        if busy < threshold {
            return;
        }
        if std::time::Instant::now() >= deadline {
            eprintln!("the machine is still {:.0}% busy; measuring anyway", busy * 100.0);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_figures() {
        let me = std::process::id();
        assert!(peak_rss_mib(me).unwrap() > 0.0);
        assert!(cpu_seconds(me).is_some());
    }

    #[tokio::test]
    async fn measures_the_machine_busy_while_it_spins() {
        let spin = std::thread::spawn(|| {
            let until = std::time::Instant::now() + std::time::Duration::from_millis(600);
            while std::time::Instant::now() < until {
                std::hint::black_box(0u64);
            }
        });
        let busy = busy_over(std::time::Duration::from_millis(500)).await.expect("/proc/stat is readable");
        spin.join().unwrap();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!(busy >= 0.5 / cpus, "one spinning thread of {cpus} CPUs shows as {busy:.2} busy");
        assert!(busy <= 1.0);
    }
}
