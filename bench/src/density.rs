//! Watcher density: N idle file watchers in one triggerer — how long until all run, the
//! resident memory they take, and the CPU they burn doing nothing.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use triggerer::definitions::load_str;

use crate::{progress, Args, Engine, FreshDb};

/// Process `pid`'s resident memory (bytes) and the CPU time it has used.
pub(crate) fn rss_and_cpu(pid: u32) -> Result<(u64, Duration)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    let (cpu, _) = cpu_times(&format!("/proc/{pid}/stat"))?;
    Ok((rss_kib * 1024, cpu))
}

/// From a `/proc/PID/stat` file: the process's CPU time, and that of its reaped children.
pub(crate) fn cpu_times(stat_path: &str) -> Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string(stat_path)?;
    // Fields after the command name (which may hold spaces): utime, stime, cutime, cstime are
    // the 14th to 17th.
    let after = stat
        .rsplit_once(')')
        .map_or(stat.as_str(), |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Linux reports these in clock ticks of 1/100 s (USER_HZ).
    let own = Duration::from_millis((ticks(11) + ticks(12)) * 10);
    let children = Duration::from_millis((ticks(13) + ticks(14)) * 10);
    Ok((own, children))
}

/// The `triggerer` binary built next to this one (`scripts/bench.sh` builds both).
pub(crate) fn triggerer_binary() -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let binary = exe.with_file_name("triggerer");
    anyhow::ensure!(
        binary.exists(),
        "{} not found: build it with `cargo build --release --bin triggerer` (scripts/bench.sh does)",
        binary.display()
    );
    Ok(binary)
}

/// Stops the child with SIGTERM (so it hands its triggers back) when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// N file watchers, one per file, over 100 directories, in one `triggerer run` process (the
/// binary users run, logging at its default level to a file): each trigger's start-up scan
/// finds its file and emits one event, so N committed events mean N started watchers.
pub async fn bench_density(engine: Engine, watchers: usize, args: &Args) -> Result<()> {
    let name = format!("{engine:?}").to_lowercase();
    let binary = triggerer_binary()?;
    let db = FreshDb::create(engine, &args.postgres_url, &format!("density{watchers}")).await?;
    let files = tempfile::tempdir()?;
    {
        let mut text = String::with_capacity(watchers * 120);
        text.push_str("[[asset]]\nname = \"landing\"\n");
        for i in 0..watchers {
            let dir = files.path().join(format!("d{:02}", i % 100));
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(format!("f{i:06}.dat")), b"x")?;
            // A glob that matches this one file: each watcher is its own trigger.
            text.push_str(&format!(
                "[[asset.watcher]]\nname = \"w{i}\"\nclasspath = \"file.FileTrigger\"\nkwargs = {{ filepath = \"{}/f{i:06}.*\" }}\n",
                dir.display()
            ));
        }
        let registry = triggerer::registry::builtin_providers();
        let plan =
            load_str("density.toml", &text, &registry).map_err(|e| anyhow::anyhow!("{e}"))?;
        db.store.apply_definitions(&plan).await?;
    }

    let log = std::fs::File::create(files.path().join("triggerer.log"))?;
    let started = Instant::now();
    let child = Child(
        std::process::Command::new(&binary)
            .args(["--database-url", &db.url, "run"])
            .args(["--capacity", &watchers.to_string()])
            .args(["--max-triggers-per-loop", &watchers.to_string()])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?,
    );
    let pid = child.0.id();
    let deadline = started + Duration::from_secs(600);
    loop {
        let events: i64 = db.store.count_asset_events().await?;
        progress(&format!("{name}: {watchers} watchers: {events} started"));
        if events as usize >= watchers {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {events} of {watchers} watchers started within 600 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_running = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await; // let the last commits settle
    let (_, cpu_before) = rss_and_cpu(pid)?;
    let idle = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let (rss, cpu_after) = rss_and_cpu(pid)?;
    let idle_cpu = (cpu_after - cpu_before).as_secs_f64() / idle.elapsed().as_secs_f64();
    progress("");
    println!(
        "{name}: density: {watchers} file watchers in one `triggerer run` all started in {:.2} s; resident {:.0} MiB; idle CPU {:.1} % of one core",
        all_running.as_secs_f64(),
        rss as f64 / 1048576.0,
        idle_cpu * 100.0
    );
    drop(child);
    db.remove().await
}
