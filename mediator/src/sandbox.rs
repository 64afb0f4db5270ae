//! A mediator on a thread of this process, serving a temporary region: the guest
//! library's runnable examples and tests, and a way to try a guest program on a host
//! without QEMU (the region file stands in for the ivshmem BAR).
//!
//! ```
//! let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
//! let region = vgpu_ring::Region::open(sandbox.region(), vgpu_ring::Access::ReadOnly)?;
//! assert_ne!(region.epoch(), 0, "the mediator has attached");
//! sandbox.stop()?;
//! # Ok::<(), anyhow::Error>(())
//! ```

use crate::daemon::{ServeOptions, Stop, serve};
use crate::dispatcher::{DispatcherStats, OnStop};
use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vgpu_config::Config;
use vgpu_ring::{Access, PoolId, Region};

/// How long [`Sandbox::start`] waits for the mediator to attach the region.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);

/// What the mediator's thread returns: each pool's counters.
type Served = Result<BTreeMap<PoolId, DispatcherStats>>;

/// The real mediator serving one VM (id 1, pool `A` on the CPU, priority 1) through a
/// 4 MiB region in a temporary directory; stopped, and its files removed, when dropped.
///
/// ```
/// let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
/// assert!(sandbox.region().is_file());
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Debug)]
pub struct Sandbox {
    config: Config,
    stop: Arc<Stop>,
    thread: Option<JoinHandle<Served>>,
    // Last: removed after the mediator has stopped.
    _dir: tempfile::TempDir,
}

impl Sandbox {
    /// Create the region and start the mediator; returns once it has attached the
    /// region (a client can attach at once).
    ///
    /// ```
    /// let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// If the directory or the region cannot be created, or the mediator fails to start
    /// or does not attach within 30 s.
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("vgpu-sandbox").tempdir()?;
        let config = Config::parse(&format!(
            "[regions]\ndir = {:?}\nsize = \"4M\"\narena_size = \"1M\"\n\
             [pools.A]\n[[vm]]\nid = 1\npool = \"A\"\npriority = 1\n",
            dir.path()
        ))?;
        let vm = &config.vms[0];
        Region::create(
            &vm.region,
            config.region_size,
            config.geometry,
            &[vm.identity().slot()],
            false,
        )?;
        let stop = Arc::new(Stop::new().context("create the stop")?);
        let thread = {
            let (config, stop) = (config.clone(), Arc::clone(&stop));
            let options = ServeOptions { log_requests: false, on_stop: OnStop::Drain };
            std::thread::Builder::new()
                .name("vgpu-sandbox".to_owned())
                .spawn(move || serve(&config, &stop, options))?
        };
        let mut sandbox = Self { config, stop, thread: Some(thread), _dir: dir };
        sandbox.wait_attached()?;
        Ok(sandbox)
    }

    /// Wait until the mediator has announced its session in the region.
    fn wait_attached(&mut self) -> Result<()> {
        let region = Region::open(self.region(), Access::ReadOnly)?;
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        while region.epoch() == 0 {
            if self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
                self.join()?;
                bail!("the mediator stopped before attaching");
            }
            if Instant::now() >= deadline {
                bail!("the mediator did not attach {} within 30 s", self.region().display());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// The VM's region file: give it to the client as
    /// `ClientOptions { region: Some(..), .. }`.
    ///
    /// ```
    /// let sandbox = vgpu_mediator::sandbox::Sandbox::start()?;
    /// assert!(sandbox.region().ends_with("vgpu-vm1"));
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    #[must_use]
    pub fn region(&self) -> &Path {
        &self.config.vms[0].region
    }

    /// Stop the mediator (requests still queued are answered with "shutting down") and
    /// remove the files.
    ///
    /// ```
    /// vgpu_mediator::sandbox::Sandbox::start()?.stop()?;
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// What the mediator failed with, if it did.
    pub fn stop(mut self) -> Result<()> {
        self.join()
    }

    /// Request the stop and wait for the mediator's thread.
    fn join(&mut self) -> Result<()> {
        self.stop.request();
        match self.thread.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(_))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(anyhow!("the mediator's thread panicked")),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.join();
    }
}
