//! A whole system on temporary files for the multi-process tests: a config, regions
//! made by the real `ivshmem-setup`, the real `vgpu-mediator` with its log captured,
//! and clients (the real `vgpu-client` or the library).

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vgpu_client::{Client, ClientOptions, Wait};
use vgpu_doorbell::{Bell, DoorbellVm, Holder};
use vgpu_ring::{Access, Region};

/// The project's binaries, next to the running test's own directory
/// (`target/<profile>/`). `cargo test --workspace` builds them.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `vgpu-mediator`.
    pub mediator: PathBuf,
    /// `vgpu-client`.
    pub client: PathBuf,
    /// `ivshmem-setup`.
    pub setup: PathBuf,
}

impl Binaries {
    /// Locate the binaries.
    ///
    /// # Panics
    ///
    /// If they are not built (run the tests with `cargo test --workspace`).
    #[must_use]
    pub fn locate() -> Self {
        let exe = std::env::current_exe().expect("current exe");
        let mut dir = exe.parent().expect("exe dir").to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let bin = |name: &str| {
            let path = dir.join(name);
            assert!(
                path.is_file(),
                "{} not built: run `cargo test --workspace` (or `cargo build --workspace`)",
                path.display()
            );
            path
        };
        Self {
            mediator: bin("vgpu-mediator"),
            client: bin("vgpu-client"),
            setup: bin("ivshmem-setup"),
        }
    }
}

/// One VM of a test system.
#[derive(Debug, Clone, Copy)]
pub struct Vm {
    /// VM id.
    pub id: u32,
    /// Pool name.
    pub pool: char,
    /// Priority.
    pub priority: u8,
    /// Weight in a fair pool (1 is left out of the config).
    pub weight: u32,
}

/// How a system's mediator is started and its regions created.
#[derive(Debug, Clone)]
pub enum Launcher {
    /// The real binaries: `ivshmem-setup create` and `vgpu-mediator`.
    Binaries(Binaries),
    /// A program that runs the mediator's command line when given `flag` first (the
    /// demo re-executing itself); regions are created with the same library
    /// `ivshmem-setup` uses.
    SelfHosted {
        /// The program.
        program: PathBuf,
        /// Its first argument.
        flag: String,
    },
}

/// Region sizes of a test system.
#[derive(Debug, Clone, Copy)]
pub struct RegionSpec {
    /// Region file size (config syntax).
    pub size: &'static str,
    /// Entries per ring.
    pub ring_entries: u32,
    /// Arena size (config syntax).
    pub arena_size: &'static str,
    /// Every VM has a doorbell, held by a doorbell holder the system runs (in this
    /// process, as `ivshmem-setup serve` would) before the mediator starts.
    pub doorbell: bool,
}

impl RegionSpec {
    /// Small regions (256 KiB, 64-entry rings, 128 KiB arena), for many-VM tests.
    pub const SMALL: Self =
        Self { size: "256K", ring_entries: 64, arena_size: "128K", doorbell: false };
}

/// A running system; the mediator is killed if the value is dropped without `stop`.
pub struct System {
    dir: tempfile::TempDir,
    launcher: Launcher,
    config: PathBuf,
    log: PathBuf,
    mediator: Option<Child>,
    holder: Option<Holding>,
    /// Environment of the mediators started from now on.
    mediator_env: Vec<(String, String)>,
}

/// The doorbell holder of a system, served by a thread of the test process.
struct Holding {
    stop: Arc<Bell>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Holding {
    fn start(config: &Path) -> Result<Self> {
        let parsed = vgpu_config::Config::load(config)?;
        let vms = parsed
            .vms
            .iter()
            .filter_map(|vm| {
                Some(DoorbellVm {
                    vm_id: vm.id,
                    socket: vm.doorbell.clone()?,
                    region: vm.region.clone(),
                })
            })
            .collect();
        let mut holder = Holder::bind(vms, &parsed.doorbell_control)?;
        let stop = Arc::new(Bell::local()?);
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || holder.serve(&*stop))
        };
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        // A bell that cannot ring leaves the thread serving until the process ends.
        if self.stop.ring().is_ok()
            && let Some(thread) = self.thread.take()
        {
            let _ = thread.join();
        }
    }
}

/// Shorthand for a VM.
#[must_use]
pub const fn vm(id: u32, pool: char, priority: u8) -> Vm {
    Vm { id, pool, priority, weight: 1 }
}

/// Shorthand for a VM of a fair pool with a weight.
#[must_use]
pub const fn weighted_vm(id: u32, pool: char, priority: u8, weight: u32) -> Vm {
    Vm { id, pool, priority, weight }
}

/// Wait for `condition` to hold, polling every millisecond, up to `timeout`.
///
/// # Errors
///
/// Naming `what` when the time runs out.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

impl System {
    /// Write a config with `pools` (name, extra TOML lines) and `vms`, plus
    /// `mediator_toml` lines in `[mediator]`; create the regions; start the mediator and
    /// wait until it has attached every region.
    ///
    /// # Errors
    ///
    /// If a step fails.
    pub fn start(pools: &[(char, &str)], vms: &[Vm], mediator_toml: &str) -> Result<Self> {
        Self::start_with(
            Launcher::Binaries(Binaries::locate()),
            RegionSpec::SMALL,
            pools,
            vms,
            mediator_toml,
        )
    }

    /// [`start`](Self::start) with another launcher.
    ///
    /// # Errors
    ///
    /// If a step fails.
    pub fn start_with(
        launcher: Launcher,
        regions: RegionSpec,
        pools: &[(char, &str)],
        vms: &[Vm],
        mediator_toml: &str,
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut text = format!(
            "[regions]\ndir = \"{}\"\nsize = \"{}\"\nring_entries = {}\narena_size = \"{}\"\n\
             doorbell = {}\n[mediator]\n{}{mediator_toml}\n",
            dir.path().display(),
            regions.size,
            regions.ring_entries,
            regions.arena_size,
            regions.doorbell,
            // Fast heartbeats unless the test sets its own.
            if mediator_toml.contains("heartbeat_interval_ms") {
                ""
            } else {
                "heartbeat_interval_ms = 20\n"
            },
        );
        for (name, extra) in pools {
            let _ = writeln!(text, "[pools.{name}]\n{extra}");
        }
        for v in vms {
            let _ = writeln!(
                text,
                "[[vm]]\nid = {}\npool = \"{}\"\npriority = {}",
                v.id, v.pool, v.priority
            );
            if v.weight != 1 {
                let _ = writeln!(text, "weight = {}", v.weight);
            }
        }
        let config = dir.path().join("vgpu.toml");
        std::fs::write(&config, text)?;
        match &launcher {
            Launcher::Binaries(bin) => {
                let out =
                    Command::new(&bin.setup).arg("create").arg("--config").arg(&config).output()?;
                if !out.status.success() {
                    bail!("ivshmem-setup create failed: {}", String::from_utf8_lossy(&out.stderr));
                }
            }
            Launcher::SelfHosted { .. } => {
                let parsed = vgpu_config::Config::load(&config)?;
                for vm in &parsed.vms {
                    Region::create(
                        &vm.region,
                        parsed.region_size,
                        parsed.geometry,
                        &[vm.identity().slot()],
                        false,
                    )?;
                }
            }
        }
        let log = dir.path().join("mediator.log");
        let holder = if regions.doorbell { Some(Holding::start(&config)?) } else { None };
        let mut system =
            Self { log, dir, launcher, config, mediator: None, holder, mediator_env: Vec::new() };
        system.start_mediator(&[])?;
        Ok(system)
    }

    /// Start (or restart) the mediator with extra arguments and wait until every region
    /// shows its new session.
    ///
    /// # Errors
    ///
    /// If it does not start or attach.
    pub fn start_mediator(&mut self, extra: &[&str]) -> Result<()> {
        let vms = vgpu_config::Config::load(&self.config)?.vms;
        let ids: Vec<u32> = vms.iter().map(|v| v.id).collect();
        self.start_mediator_serving(extra, &ids)
    }

    /// Start (or restart) the mediator and wait until the regions of `vms` show its
    /// new session (the others may be quarantined).
    ///
    /// # Errors
    ///
    /// If it does not start or attach them.
    pub fn start_mediator_serving(&mut self, extra: &[&str], vms: &[u32]) -> Result<()> {
        let vms: Vec<u32> = vms.to_vec();
        // A region a guest scribbled over has no readable epoch until the mediator
        // re-stamps it.
        let before: Vec<u64> = vms.iter().map(|&v| self.epoch(v).unwrap_or(0)).collect();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut command = match &self.launcher {
            Launcher::Binaries(bin) => Command::new(&bin.mediator),
            Launcher::SelfHosted { program, flag } => {
                let mut c = Command::new(program);
                c.arg(flag);
                c
            }
        };
        let child = command
            .arg("--config")
            .arg(&self.config)
            .args(extra)
            .envs(self.mediator_env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start vgpu-mediator")?;
        self.mediator = Some(child);
        wait_for("the mediator to attach every region", Duration::from_secs(20), || {
            vms.iter()
                .zip(&before)
                .all(|(&v, old)| self.epoch(v).is_ok_and(|e| e != 0 && e != *old))
        })
    }

    fn epoch(&self, vm: u32) -> Result<u64> {
        Ok(Region::open(&self.region(vm), Access::ReadOnly)?.epoch())
    }

    /// Set `key` to `value` in the environment of the mediators started from now on.
    pub fn set_mediator_env(&mut self, key: &str, value: &str) {
        self.mediator_env.push((key.to_owned(), value.to_owned()));
    }

    /// The temporary directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file.
    #[must_use]
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// VM `vm`'s region file.
    #[must_use]
    pub fn region(&self, vm: u32) -> PathBuf {
        self.dir.path().join(format!("vgpu-vm{vm}"))
    }

    /// Stop the system's doorbell holder (its sockets go; a running mediator keeps the
    /// doorbells it has).
    pub fn stop_holder(&mut self) {
        self.holder = None;
    }

    /// Start the doorbell holder (again), as `ivshmem-setup serve` would.
    ///
    /// # Errors
    ///
    /// If its sockets cannot be bound.
    pub fn start_holder(&mut self) -> Result<()> {
        self.holder = Some(Holding::start(&self.config)?);
        Ok(())
    }

    /// VM `vm`'s doorbell socket (when the system has doorbells).
    #[must_use]
    pub fn doorbell_socket(&self, vm: u32) -> PathBuf {
        self.dir.path().join(format!("vgpu-vm{vm}.sock"))
    }

    /// A library client on VM `vm`'s region (standing in for its QEMU on the doorbell
    /// socket when the system has doorbells).
    ///
    /// # Errors
    ///
    /// If it cannot attach.
    pub fn client(&self, vm: u32, wait: Wait) -> Result<Client> {
        let options = ClientOptions {
            region: Some(self.region(vm)),
            doorbell_socket: self.holder.is_some().then(|| self.doorbell_socket(vm)),
            wait,
            timeout: Duration::from_secs(30),
            ..ClientOptions::default()
        };
        Ok(Client::attach(&options)?)
    }

    /// The real binaries.
    ///
    /// # Panics
    ///
    /// If the system was started with [`Launcher::SelfHosted`].
    #[must_use]
    pub fn binaries(&self) -> &Binaries {
        match &self.launcher {
            Launcher::Binaries(bin) => bin,
            Launcher::SelfHosted { .. } => panic!("this system runs without the separate binaries"),
        }
    }

    /// A `vgpu-client` command on VM `vm`'s region with `args`.
    ///
    /// # Panics
    ///
    /// As [`binaries`](Self::binaries).
    #[must_use]
    pub fn client_command(&self, vm: u32, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binaries().client);
        cmd.arg("--region").arg(self.region(vm));
        if self.holder.is_some() {
            cmd.arg("--doorbell-socket").arg(self.doorbell_socket(vm));
        }
        cmd.args(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }

    /// Run `vgpu-client` to completion.
    ///
    /// # Errors
    ///
    /// If it cannot be started.
    pub fn run_client(&self, vm: u32, args: &[&str]) -> Result<Output> {
        Ok(self.client_command(vm, args).output()?)
    }

    /// The mediator's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log lines containing `marker` (e.g. `[PROCESS]`), from the marker on.
    #[must_use]
    pub fn lines(&self, marker: &str) -> Vec<String> {
        self.log().lines().filter_map(|l| l.find(marker).map(|i| l[i..].to_owned())).collect()
    }

    /// Wait until the log has at least `n` lines containing `marker`.
    ///
    /// # Errors
    ///
    /// On timeout.
    pub fn wait_lines(&self, marker: &str, n: usize) -> Result<()> {
        wait_for(&format!("{n} log lines with {marker:?}"), Duration::from_secs(20), || {
            self.lines(marker).len() >= n
        })
    }

    /// The mediator's process id.
    #[must_use]
    pub fn mediator_pid(&self) -> Option<u32> {
        self.mediator.as_ref().map(Child::id)
    }

    /// Whether the mediator is still running.
    pub fn mediator_running(&mut self) -> bool {
        self.mediator.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The mediator's resident memory, in KiB.
    #[must_use]
    pub fn mediator_rss_kib(&self) -> Option<u64> {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.mediator_pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// The voluntary context switches (sleeps) of each of the mediator's threads so far,
    /// by thread name.
    #[must_use]
    pub fn mediator_sleeps(&self) -> BTreeMap<String, u64> {
        let Some(pid) = self.mediator_pid() else { return BTreeMap::new() };
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return BTreeMap::new();
        };
        let mut sleeps = BTreeMap::new();
        for task in tasks.flatten() {
            let read = |file| std::fs::read_to_string(task.path().join(file)).unwrap_or_default();
            let count = read("status").lines().find_map(|l| {
                l.strip_prefix("voluntary_ctxt_switches:").and_then(|v| v.trim().parse().ok())
            });
            *sleeps.entry(read("comm").trim().to_owned()).or_default() += count.unwrap_or(0);
        }
        sleeps
    }

    /// Send `signal` to the mediator.
    ///
    /// # Errors
    ///
    /// If it is not running.
    pub fn signal_mediator(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = self.mediator_pid().context("mediator not running")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid)?), signal)?;
        Ok(())
    }

    /// Kill the mediator with SIGKILL (a crash) and reap it.
    ///
    /// # Errors
    ///
    /// If it is not running.
    pub fn kill_mediator(&mut self) -> Result<()> {
        let mut child = self.mediator.take().context("mediator not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Stop the mediator with SIGTERM and return its exit status.
    ///
    /// # Errors
    ///
    /// If it is not running or does not stop within 20 s.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self.mediator.take().context("mediator not running")?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("mediator did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if let Some(mut child) = self.mediator.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
