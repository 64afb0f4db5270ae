//! The configuration file shared by `ivshmem-setup` and `vgpu-mediator`, parsed and
//! validated in one place (documented in `docs/CONFIG.md`).
//!
//! ```
//! let text = r#"
//!     [regions]
//!     dir = "/tmp"
//!     [pools.A]
//!     [[vm]]
//!     id = 1
//!     pool = "A"
//!     priority = "high"
//! "#;
//! let config = vgpu_config::Config::parse(text)?;
//! assert_eq!(config.vms[0].priority, vgpu_ring::Priority::HIGH);
//! assert_eq!(config.vms[0].region, std::path::Path::new("/tmp/vgpu-vm1"));
//! # Ok::<(), vgpu_config::ConfigError>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use vgpu_ring::{Geometry, GeometryError, PoolId, Priority, VmIdentity};

/// Why a configuration was refused. Every message names the offending field.
///
/// ```
/// use vgpu_config::{Config, ConfigError};
/// let e = Config::parse("[regions]\ndir = \"/tmp\"\nsize = \"3M\"\n[pools.A]\n").unwrap_err();
/// assert!(matches!(&e, ConfigError::Invalid { field, .. } if field == "regions.size"));
/// assert_eq!(e.to_string(), "regions.size: 3145728 is not a power of two");
/// // A file's errors name the file and the line.
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("vgpu.toml");
/// std::fs::write(&path, "[regions]\ndir = \"/tmp\"\nsize = \"3M\"\n[pools.A]\n")?;
/// let e = Config::load(&path).unwrap_err();
/// assert_eq!(e.to_string(), format!("{}:3: regions.size: 3145728 is not a power of two", path.display()));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type (the message names the key).
    #[error("{message}")]
    Syntax {
        /// The line (1-based) the parser stopped at, if known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A field's value is invalid.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, as a path (`regions.size`, `vm[2].priority`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// An error in a configuration file: the file, the line where it applies (when
    /// known), and the error.
    #[error("{}{}: {error}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    InFile {
        /// The file.
        path: PathBuf,
        /// The line (1-based) where the error applies.
        line: Option<usize>,
        /// The error.
        error: Box<ConfigError>,
    },
}

/// The line (1-based) of `text` where `field` (`regions.size`, `pools.A.policy`,
/// `vm[2].priority`, ...) is set, or else where its table starts.
fn line_of(text: &str, field: &str) -> Option<usize> {
    let (table, key) = match field.rsplit_once('.') {
        Some((table, key)) if !key.is_empty() => (table, Some(key)),
        _ => (field, None),
    };
    let lines: Vec<&str> = text.lines().collect();
    let header = match table.split_once('[') {
        // `vm[2]`: the third `[[vm]]` header.
        Some((name, rest)) => {
            let index: usize = rest.trim_end_matches(']').parse().ok()?;
            let want = format!("[[{name}]]");
            lines.iter().enumerate().filter(|(_, l)| l.trim() == want).nth(index)?.0
        }
        None => {
            let want = format!("[{table}]");
            match lines.iter().position(|l| l.trim() == want) {
                Some(i) => i,
                // A key of a table that is not there, or a whole array (`vm`).
                None => {
                    return lines
                        .iter()
                        .position(|l| l.trim() == format!("[[{table}]]"))
                        .map(|i| i + 1);
                }
            }
        }
    };
    let Some(key) = key else { return Some(header + 1) };
    let in_table = lines[header + 1..].iter().take_while(|l| !l.trim_start().starts_with('['));
    let found = in_table.enumerate().find(|(_, l)| {
        l.trim_start().strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='))
    });
    Some(found.map_or(header, |(i, _)| header + 1 + i) + 1)
}

impl ConfigError {
    /// This error as one in file `path` whose text is `text`, with the line where it
    /// applies.
    fn in_file(self, path: &Path, text: &str) -> Self {
        let line = match &self {
            Self::Syntax { line, .. } => *line,
            Self::Invalid { field, .. } => line_of(text, field),
            Self::Read { .. } | Self::InFile { .. } => return self,
        };
        Self::InFile { path: path.to_owned(), line, error: Box::new(self) }
    }
}

impl From<toml::de::Error> for ConfigError {
    fn from(e: toml::de::Error) -> Self {
        Self::Syntax { line: None, message: e.message().to_owned() }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), message: message.into() }
}

/// Scheduling policy of a pool.
///
/// ```
/// use vgpu_config::Config;
/// let config = Config::parse(r#"
///     [regions]
///     dir = "/tmp"
///     [pools.A]
///     [pools.B]
///     policy = "aging"
///     aging_interval_ms = 50
///     [pools.F]
///     policy = "fair"
///     [[vm]]
///     id = 1
///     pool = "A"
///     priority = 2
/// "#)?;
/// use std::time::Duration;
/// use vgpu_config::Policy;
/// use vgpu_ring::PoolId;
/// let policy = |name| config.pools[&PoolId::new(name).unwrap()].policy;
/// assert_eq!(policy(b'A'), Policy::Strict);
/// assert_eq!(policy(b'B'), Policy::Aging { interval: Duration::from_millis(50) });
/// assert_eq!(policy(b'F'), Policy::Fair);
/// # Ok::<(), vgpu_config::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Strict priority, FIFO within a priority (the original semantics).
    #[default]
    Strict,
    /// As strict, but a waiting request gains one priority level per `interval`.
    Aging {
        /// Waiting time per level gained.
        interval: Duration,
    },
    /// Strict between priority levels; within a level, the next job comes from the VM
    /// that has had the least executor time relative to its weight.
    Fair,
}

/// The policy names of the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum PolicyName {
    #[default]
    Strict,
    Aging,
    Fair,
}

/// A validated pool.
///
/// ```
/// use vgpu_config::Config;
/// let config = Config::parse(r#"
///     [regions]
///     dir = "/tmp"
///     [pools.A]
///     [[vm]]
///     id = 1
///     pool = "A"
///     priority = 2
/// "#)?;
/// use vgpu_config::{Backend, Policy};
/// let pool = &config.pools[&vgpu_ring::PoolId::new(b'A').unwrap()];
/// assert_eq!((pool.name.name(), pool.policy, pool.backend), ('A', Policy::Strict, Backend::Cpu));
/// # Ok::<(), vgpu_config::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// The pool's id (its one-character name).
    pub name: PoolId,
    /// Scheduling policy.
    pub policy: Policy,
    /// Where the pool's operations run.
    pub backend: Backend,
}

/// Where a pool's operations run.
///
/// ```
/// use vgpu_config::Config;
/// let config = Config::parse(r#"
///     [regions]
///     dir = "/tmp"
///     [pools.A]
///     backend = "cuda"
///     device = 1
///     fallback = "cpu"
///     [[vm]]
///     id = 1
///     pool = "A"
///     priority = 2
/// "#)?;
/// use vgpu_config::Backend;
/// let pool = &config.pools[&vgpu_ring::PoolId::new(b'A').unwrap()];
/// assert_eq!(pool.backend, Backend::Cuda { device: 1, fallback_to_cpu: true });
/// # Ok::<(), vgpu_config::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// On the host CPU (always available).
    #[default]
    Cpu,
    /// On a CUDA GPU.
    Cuda {
        /// CUDA device ordinal.
        device: u32,
        /// Run on the CPU instead (loudly logged) if the GPU cannot be used; without it
        /// the mediator refuses to start.
        fallback_to_cpu: bool,
    },
}

/// A validated VM.
///
/// ```
/// use vgpu_config::Config;
/// let config = Config::parse(r#"
///     [regions]
///     dir = "/tmp"
///     [pools.A]
///     [[vm]]
///     id = 1
///     pool = "A"
///     priority = 2
///     doorbell = true
/// "#)?;
/// let vm = config.vm(1)?;
/// assert_eq!(vm.region, std::path::Path::new("/tmp/vgpu-vm1"));
/// assert_eq!(vm.doorbell.as_deref(), Some(std::path::Path::new("/tmp/vgpu-vm1.sock")));
/// assert_eq!(vm.weight, 1);
/// # Ok::<(), vgpu_config::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// VM id.
    pub id: u32,
    /// Pool.
    pub pool: PoolId,
    /// Priority.
    pub priority: Priority,
    /// Region file.
    pub region: PathBuf,
    /// Share of its pool's executor time relative to the other VMs of its priority
    /// (pools with `policy = "fair"`; 1 otherwise).
    pub weight: u32,
    /// The VM's doorbell socket (QEMU's `ivshmem-doorbell` connects to it) when the VM
    /// has a doorbell; `None` for a plain `ivshmem-plain` VM, which the host polls.
    pub doorbell: Option<PathBuf>,
}

impl VmConfig {
    /// The identity the host writes into the VM's slot and enforces.
    ///
    /// ```
    /// use vgpu_config::Config;
    /// let config = Config::parse(r#"
    ///     [regions]
    ///     dir = "/tmp"
    ///     [pools.A]
    ///     [[vm]]
    ///     id = 1
    ///     pool = "A"
    ///     priority = 2
    /// "#)?;
    /// let id = config.vms[0].identity();
    /// assert_eq!(id.to_string(), "vm 1 pool A priority 2");
    /// # Ok::<(), vgpu_config::ConfigError>(())
    /// ```
    #[must_use]
    pub fn identity(&self) -> VmIdentity {
        VmIdentity { vm_id: self.id, pool: self.pool, priority: self.priority }
    }
}

/// Settings of the mediator daemon.
///
/// ```
/// use std::time::Duration;
/// use vgpu_config::Config;
/// let config = Config::parse(r#"
///     [regions]
///     dir = "/tmp"
///     [mediator]
///     heartbeat_interval_ms = 50
///     [pools.A]
///     [[vm]]
///     id = 1
///     pool = "A"
///     priority = 0
/// "#)?;
/// assert_eq!(config.mediator.heartbeat_interval, Duration::from_millis(50));
/// assert!(!config.mediator.drain_on_stop);
/// # Ok::<(), vgpu_config::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediatorConfig {
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// Most requests of one VM that may wait in its pool's queue.
    pub max_queued_per_vm: u32,
    /// How long an idle dispatcher busy-polls before it starts to back off.
    pub idle_spin: Duration,
    /// Longest sleep of an idle dispatcher between polls (bounds wake-up latency).
    pub max_idle_sleep: Duration,
    /// How often a quarantined VM's region is tried again.
    pub quarantine_retry: Duration,
    /// At shutdown, answer queued requests with error 8 instead of leaving them in the
    /// rings for the next mediator.
    pub drain_on_stop: bool,
}

/// How often a dispatcher whose VMs all sleep on their doorbells wakes to beat, for a
/// heartbeat `interval`: every five intervals, at most once a second, and never less
/// often than the interval itself. A live mediator's heartbeat so changes well within
/// what a guest (ten intervals) and the host's tools (three intervals and a second)
/// allow before they call it silent, while an idle pool wakes a fifth as often.
///
/// ```
/// use std::time::Duration;
/// use vgpu_config::sleeping_heartbeat;
/// assert_eq!(sleeping_heartbeat(Duration::from_millis(100)), Duration::from_millis(500));
/// assert_eq!(sleeping_heartbeat(Duration::from_millis(400)), Duration::from_secs(1));
/// assert_eq!(sleeping_heartbeat(Duration::from_secs(5)), Duration::from_secs(5));
/// ```
#[must_use]
pub fn sleeping_heartbeat(interval: Duration) -> Duration {
    (interval * 5).min(Duration::from_secs(1)).max(interval)
}

/// A validated configuration.
///
/// ```
/// use vgpu_config::Config;
/// let config = Config::parse(r#"
///     [regions]
///     dir = "/tmp"
///     [pools.A]
///     [[vm]]
///     id = 1
///     pool = "A"
///     priority = 2
/// "#)?;
/// assert_eq!(config.region_size, 4 << 20, "the default size");
/// assert_eq!(config.geometry.slot_count, 1, "one slot per VM");
/// assert_eq!(config.vms.len(), 1);
/// # Ok::<(), vgpu_config::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Directory for region files.
    pub region_dir: PathBuf,
    /// Size of each region file (a power of two).
    pub region_size: u64,
    /// Geometry of each region (one slot per VM).
    pub geometry: Geometry,
    /// Unix group that owns region files, if set.
    pub group: Option<String>,
    /// The doorbell holder's control socket, from which a mediator receives the
    /// doorbells of the VMs that have one.
    pub doorbell_control: PathBuf,
    /// Pools, by name.
    pub pools: BTreeMap<PoolId, PoolConfig>,
    /// VMs, in file order.
    pub vms: Vec<VmConfig>,
    /// Mediator settings.
    pub mediator: MediatorConfig,
    /// Where the mediator serves Prometheus metrics (`[metrics] listen`); `None`: off.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    regions: RawRegions,
    #[serde(default)]
    pools: BTreeMap<String, RawPool>,
    #[serde(default)]
    vm: Vec<RawVm>,
    #[serde(default)]
    mediator: RawMediator,
    #[serde(default)]
    metrics: RawMetrics,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRegions {
    dir: Option<PathBuf>,
    size: Option<RawSize>,
    ring_entries: Option<u32>,
    arena_size: Option<RawSize>,
    group: Option<String>,
    doorbell: Option<bool>,
    doorbell_control: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPool {
    #[serde(default)]
    policy: PolicyName,
    aging_interval_ms: Option<u64>,
    #[serde(default)]
    backend: BackendKind,
    device: Option<u32>,
    fallback: Option<BackendKind>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum BackendKind {
    #[default]
    Cpu,
    Cuda,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPriority {
    Number(i64),
    Name(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    id: u32,
    pool: String,
    priority: RawPriority,
    region: Option<PathBuf>,
    weight: Option<u32>,
    doorbell: Option<bool>,
    doorbell_socket: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMediator {
    heartbeat_interval_ms: Option<u64>,
    max_queued_per_vm: Option<u32>,
    idle_spin_us: Option<u64>,
    max_idle_sleep_us: Option<u64>,
    quarantine_retry_ms: Option<u64>,
    drain_on_stop: Option<bool>,
}

/// Default region directory.
pub const DEFAULT_REGION_DIR: &str = "/dev/shm";
/// Default region size.
pub const DEFAULT_REGION_SIZE: u64 = 4 << 20;

/// Parse a size: a number of bytes, or a number with a `K`, `M` or `G` suffix (powers
/// of 1024; `KiB`/`MB`-style spellings are accepted too).
///
/// ```
/// assert_eq!(vgpu_config::parse_size("4M"), Some(4 << 20));
/// assert_eq!(vgpu_config::parse_size("64KiB"), Some(64 << 10));
/// assert_eq!(vgpu_config::parse_size("12"), Some(12));
/// assert_eq!(vgpu_config::parse_size("4X"), None);
/// ```
#[must_use]
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return None,
    };
    number.checked_mul(1 << shift)
}

fn size_field(field: &str, raw: Option<RawSize>, default: u64) -> Result<u64, ConfigError> {
    match raw {
        None => Ok(default),
        Some(RawSize::Bytes(n)) => Ok(n),
        Some(RawSize::Text(t)) => parse_size(&t)
            .ok_or_else(|| invalid(field, format!("{t:?} is not a size (e.g. 4M, 65536)"))),
    }
}

/// A positive duration of at most `max` units (`unit` makes a `Duration` of one).
fn duration(
    field: &str,
    raw: Option<u64>,
    default: u64,
    max: u64,
    unit: fn(u64) -> Duration,
) -> Result<Duration, ConfigError> {
    match raw.unwrap_or(default) {
        0 => Err(invalid(field, "must be positive")),
        n if n > max => Err(invalid(field, format!("{n} is above the maximum of {max}"))),
        n => Ok(unit(n)),
    }
}

/// Upper bound of `heartbeat_interval_ms` (a minute).
pub const MAX_HEARTBEAT_INTERVAL_MS: u64 = 60_000;
/// Upper bound of `idle_spin_us` and `max_idle_sleep_us` (a second).
pub const MAX_IDLE_US: u64 = 1_000_000;
/// Default `aging_interval_ms`.
pub const DEFAULT_AGING_INTERVAL_MS: u64 = 100;
/// Upper bound of `aging_interval_ms` and `quarantine_retry_ms` (an hour).
pub const MAX_INTERVAL_MS: u64 = 3_600_000;

impl Config {
    /// Read and validate the file at `path`.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("vgpu.toml");
    /// std::fs::write(&path, "[regions]\ndir = \"/tmp\"\n[pools.A]\n[[vm]]\nid = 3\npool = \"A\"\npriority = 0\n")?;
    /// let config = vgpu_config::Config::load(&path)?;
    /// assert_eq!(config.vm(3)?.priority, vgpu_ring::Priority::LOW);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the file or field.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let config = Self::parse(&text).map_err(|e| e.in_file(path, &text))?;
        config.check_distinct_regions().map_err(|e| e.in_file(path, &text))?;
        Ok(config)
    }

    /// Check that no two VMs name the same region file, comparing real paths (the
    /// directory's path with symlinks and `..` resolved, plus the file name) where the
    /// directory exists.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// // Two spellings of one file, through a symbolic link.
    /// std::os::unix::fs::symlink(dir.path(), dir.path().join("link"))?;
    /// let config = vgpu_config::Config::parse(&format!(
    ///     "[regions]\ndir = {d:?}\n[pools.A]\n\
    ///      [[vm]]\nid = 1\npool = \"A\"\npriority = 0\nregion = \"{d}/r\"\n\
    ///      [[vm]]\nid = 2\npool = \"A\"\npriority = 0\nregion = \"{d}/link/r\"\n",
    ///     d = dir.path().display()
    /// ))?;
    /// let e = config.check_distinct_regions().unwrap_err();
    /// assert!(e.to_string().starts_with("vm[1].region"), "{e}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the second VM's `region`.
    pub fn check_distinct_regions(&self) -> Result<(), ConfigError> {
        let real = |path: &Path| -> PathBuf {
            let resolved = std::fs::canonicalize(path).ok().or_else(|| {
                let dir = std::fs::canonicalize(path.parent()?).ok()?;
                Some(dir.join(path.file_name()?))
            });
            resolved.unwrap_or_else(|| path.to_owned())
        };
        let mut seen = BTreeMap::new();
        for (i, vm) in self.vms.iter().enumerate() {
            if let Some(other) = seen.insert(real(&vm.region), vm.id) {
                return Err(invalid(
                    format!("vm[{i}].region"),
                    format!(
                        "{} is the same file as vm {other}'s region (each VM needs its own)",
                        vm.region.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Parse and validate configuration text.
    ///
    /// ```
    /// use vgpu_config::{Config, ConfigError};
    /// let e = Config::parse("[regions]\ndir = \"/tmp\"\n[pools.A]\ncolour = \"red\"\n").unwrap_err();
    /// assert!(matches!(e, ConfigError::Syntax { line: Some(4), .. }), "{e}");
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the field.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            line: e.span().map(|span| text[..span.start].matches('\n').count() + 1),
            message: e.message().trim_end().to_owned(),
        })?;
        let region_dir = raw.regions.dir.unwrap_or_else(|| PathBuf::from(DEFAULT_REGION_DIR));
        let doorbell_default = raw.regions.doorbell.unwrap_or(false);
        let doorbell_control = raw
            .regions
            .doorbell_control
            .clone()
            .unwrap_or_else(|| region_dir.join("vgpu-doorbells.sock"));
        let default = Geometry::default();
        let ring_entries = raw.regions.ring_entries.unwrap_or(default.ring_entries);
        let arena_size = size_field(
            "regions.arena_size",
            raw.regions.arena_size,
            u64::from(default.arena_size),
        )?;
        let arena_size = u32::try_from(arena_size).map_err(|_| {
            invalid("regions.arena_size", format!("{arena_size} is larger than 4 GiB"))
        })?;
        let geometry = Geometry { slot_count: 1, ring_entries, arena_size };
        geometry.validate().map_err(|e| {
            let field = match e {
                GeometryError::RingEntries(_) => "regions.ring_entries",
                GeometryError::ArenaSize(_) => "regions.arena_size",
                GeometryError::SlotCount(_) => "regions",
            };
            invalid(field, e.to_string())
        })?;
        let region_size = size_field(
            "regions.size",
            raw.regions.size,
            DEFAULT_REGION_SIZE.max(geometry.min_region_size() as u64),
        )?;
        if !region_size.is_power_of_two() {
            return Err(invalid("regions.size", format!("{region_size} is not a power of two")));
        }
        let required = geometry.required_size() as u64;
        if region_size < required {
            return Err(invalid(
                "regions.size",
                format!(
                    "{region_size} bytes is too small for {ring_entries} ring entries and a {arena_size}-byte arena (need {})",
                    geometry.min_region_size()
                ),
            ));
        }

        let mut pools = BTreeMap::new();
        for (name, pool) in raw.pools {
            let field = format!("pools.{name}");
            let name: PoolId = name.parse().map_err(|m: String| invalid(&field, m))?;
            let policy = match pool.policy {
                PolicyName::Strict | PolicyName::Fair if pool.aging_interval_ms.is_some() => {
                    return Err(invalid(
                        format!("{field}.aging_interval_ms"),
                        "only valid with policy = \"aging\" (aging and fair do not combine)",
                    ));
                }
                PolicyName::Fair => Policy::Fair,
                PolicyName::Strict => Policy::Strict,
                PolicyName::Aging => Policy::Aging {
                    interval: duration(
                        &format!("{field}.aging_interval_ms"),
                        pool.aging_interval_ms,
                        DEFAULT_AGING_INTERVAL_MS,
                        MAX_INTERVAL_MS,
                        Duration::from_millis,
                    )?,
                },
            };
            let backend = match pool.backend {
                BackendKind::Cpu => {
                    if pool.device.is_some() {
                        return Err(invalid(
                            format!("{field}.device"),
                            "only valid with backend = \"cuda\"",
                        ));
                    }
                    if pool.fallback.is_some() {
                        return Err(invalid(
                            format!("{field}.fallback"),
                            "only valid with backend = \"cuda\"",
                        ));
                    }
                    Backend::Cpu
                }
                BackendKind::Cuda => Backend::Cuda {
                    device: pool.device.unwrap_or(0),
                    fallback_to_cpu: match pool.fallback {
                        None => false,
                        Some(BackendKind::Cpu) => true,
                        Some(BackendKind::Cuda) => {
                            return Err(invalid(
                                format!("{field}.fallback"),
                                "the fallback of a cuda pool can only be \"cpu\"",
                            ));
                        }
                    },
                },
            };
            pools.insert(name, PoolConfig { name, policy, backend });
        }
        if pools.is_empty() {
            return Err(invalid("pools", "no pool defined (add e.g. [pools.A])"));
        }

        let mut vms = Vec::with_capacity(raw.vm.len());
        let mut ids = BTreeSet::new();
        let mut regions = BTreeSet::new();
        for (i, vm) in raw.vm.into_iter().enumerate() {
            let field = format!("vm[{i}]");
            if !ids.insert(vm.id) {
                return Err(invalid(format!("{field}.id"), format!("duplicate VM id {}", vm.id)));
            }
            let pool = vm.pool.parse().ok().filter(|p| pools.contains_key(p)).ok_or_else(|| {
                invalid(
                    format!("{field}.pool"),
                    format!(
                        "unknown pool {:?} (defined: {})",
                        vm.pool,
                        pools.keys().map(|p| p.name()).collect::<String>()
                    ),
                )
            })?;
            let priority = match vm.priority {
                RawPriority::Number(n) => {
                    u8::try_from(n).ok().and_then(Priority::new).ok_or_else(|| {
                        invalid(
                            format!("{field}.priority"),
                            format!("priority {n} out of range 0..=2"),
                        )
                    })?
                }
                RawPriority::Name(s) => {
                    s.parse().map_err(|m: String| invalid(format!("{field}.priority"), m))?
                }
            };
            let region = vm.region.unwrap_or_else(|| region_dir.join(format!("vgpu-vm{}", vm.id)));
            if !regions.insert(region.clone()) {
                return Err(invalid(
                    format!("{field}.region"),
                    format!("{} is used by another VM", region.display()),
                ));
            }
            let weight = match (vm.weight, pools[&pool].policy) {
                (None, _) => 1,
                (Some(0), _) => {
                    return Err(invalid(format!("{field}.weight"), "must be at least 1"));
                }
                (Some(w), Policy::Fair) => w,
                (Some(_), _) => {
                    return Err(invalid(
                        format!("{field}.weight"),
                        format!("only used in pools with policy = \"fair\" (pool {pool} is not)"),
                    ));
                }
            };
            let doorbell = match (vm.doorbell.unwrap_or(doorbell_default), vm.doorbell_socket) {
                (true, socket) => Some(
                    socket.unwrap_or_else(|| region_dir.join(format!("vgpu-vm{}.sock", vm.id))),
                ),
                (false, None) => None,
                (false, Some(_)) => {
                    return Err(invalid(
                        format!("{field}.doorbell_socket"),
                        "set, but the VM has no doorbell (add doorbell = true)",
                    ));
                }
            };
            vms.push(VmConfig { id: vm.id, pool, priority, region, weight, doorbell });
        }
        if vms.is_empty() {
            return Err(invalid("vm", "no [[vm]] defined"));
        }

        let m = raw.mediator;
        let mediator = MediatorConfig {
            heartbeat_interval: duration(
                "mediator.heartbeat_interval_ms",
                m.heartbeat_interval_ms,
                100,
                MAX_HEARTBEAT_INTERVAL_MS,
                Duration::from_millis,
            )?,
            max_queued_per_vm: match m.max_queued_per_vm.unwrap_or(256) {
                0 => return Err(invalid("mediator.max_queued_per_vm", "must be positive")),
                n => n,
            },
            idle_spin: match m.idle_spin_us {
                Some(0) => Duration::ZERO,
                raw => {
                    duration("mediator.idle_spin_us", raw, 100, MAX_IDLE_US, Duration::from_micros)?
                }
            },
            max_idle_sleep: duration(
                "mediator.max_idle_sleep_us",
                m.max_idle_sleep_us,
                10_000,
                MAX_IDLE_US,
                Duration::from_micros,
            )?,
            quarantine_retry: duration(
                "mediator.quarantine_retry_ms",
                m.quarantine_retry_ms,
                2_000,
                MAX_INTERVAL_MS,
                Duration::from_millis,
            )?,
            drain_on_stop: m.drain_on_stop.unwrap_or(false),
        };
        let metrics_listen = raw
            .metrics
            .listen
            .map(|text| {
                text.parse().map_err(|_| {
                    invalid(
                        "metrics.listen",
                        format!("{text:?} is not an address and port (e.g. \"127.0.0.1:9464\")"),
                    )
                })
            })
            .transpose()?;
        Ok(Self {
            region_dir,
            region_size,
            geometry,
            group: raw.regions.group,
            doorbell_control,
            pools,
            vms,
            mediator,
            metrics_listen,
        })
    }

    /// Check that the region directory exists (for commands that create regions).
    ///
    /// ```
    /// let config = vgpu_config::Config::parse(
    ///     "[regions]\ndir = \"/nonexistent\"\n[pools.A]\n[[vm]]\nid = 1\npool = \"A\"\npriority = 0\n",
    /// )?;
    /// assert!(config.check_region_dir().is_err());
    /// # Ok::<(), vgpu_config::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming `regions.dir`.
    pub fn check_region_dir(&self) -> Result<(), ConfigError> {
        if self.region_dir.is_dir() {
            Ok(())
        } else {
            Err(invalid(
                "regions.dir",
                format!("{} does not exist or is not a directory", self.region_dir.display()),
            ))
        }
    }

    /// The VM with id `id`.
    ///
    /// ```
    /// use vgpu_config::Config;
    /// let config = Config::parse(r#"
    ///     [regions]
    ///     dir = "/tmp"
    ///     [pools.A]
    ///     [[vm]]
    ///     id = 1
    ///     pool = "A"
    ///     priority = 2
    /// "#)?;
    /// assert_eq!(config.vm(1)?.priority, vgpu_ring::Priority::HIGH);
    /// assert_eq!(config.vm(2).unwrap_err().to_string(), "vm: no VM with id 2");
    /// # Ok::<(), vgpu_config::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] if there is none.
    pub fn vm(&self, id: u32) -> Result<&VmConfig, ConfigError> {
        self.vms
            .iter()
            .find(|vm| vm.id == id)
            .ok_or_else(|| invalid("vm", format!("no VM with id {id}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: char) -> PoolId {
        name.to_string().parse().unwrap()
    }

    const BASE: &str = r#"
        [regions]
        dir = "/tmp"
        [pools.A]
        [pools.B]
        policy = "aging"
        aging_interval_ms = 20
        [[vm]]
        id = 1
        pool = "A"
        priority = "low"
        [[vm]]
        id = 2
        pool = "B"
        priority = 2
        region = "/tmp/custom"
    "#;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_defaults_and_overrides() {
        let c = Config::parse(BASE).unwrap();
        assert_eq!(c.region_size, 4 << 20);
        assert_eq!(c.geometry, Geometry { slot_count: 1, ring_entries: 256, arena_size: 1 << 20 });
        assert_eq!(
            c.pools[&pool('B')].policy,
            Policy::Aging { interval: Duration::from_millis(20) }
        );
        assert_eq!(c.pools[&pool('A')].policy, Policy::Strict);
        assert_eq!(c.vms[0].region, Path::new("/tmp/vgpu-vm1"));
        assert_eq!(c.vms[1].region, Path::new("/tmp/custom"));
        assert_eq!(
            c.vms[1].identity().slot(),
            vgpu_ring::SlotIdentity::new(2, pool('B'), vgpu_ring::Priority::HIGH)
        );
        assert_eq!(c.mediator.max_queued_per_vm, 256);
    }

    /// For every allowed heartbeat interval, the sleeping heartbeat stays under what a
    /// guest allows before it calls the mediator silent (ten intervals, at least
    /// 500 ms), what the host's tools allow (three intervals and a second), and is never
    /// shorter than the interval.
    #[test]
    fn the_sleeping_heartbeat_stays_within_every_silence_limit() {
        for ms in (1..=2_000).chain((2_000..=MAX_HEARTBEAT_INTERVAL_MS).step_by(997)) {
            let interval = Duration::from_millis(ms);
            let sleeping = sleeping_heartbeat(interval);
            assert!(sleeping >= interval, "{ms} ms");
            assert!(sleeping < (interval * 10).max(Duration::from_millis(500)), "{ms} ms");
            assert!(sleeping < interval * 3 + Duration::from_secs(1), "{ms} ms");
        }
    }

    #[test]
    fn any_number_of_pools() {
        let mut text = String::from("[regions]\ndir = \"/tmp\"\n");
        for (i, p) in "ABCDEFGHIJ0123".chars().enumerate() {
            text += &format!("[pools.{p}]\n[[vm]]\nid = {i}\npool = \"{p}\"\npriority = 1\n");
        }
        assert_eq!(Config::parse(&text).unwrap().pools.len(), 14);
    }

    #[test]
    fn errors_name_the_field() {
        assert!(
            err(&BASE.replace("pool = \"B\"", "pool = \"C\""))
                .contains("vm[1].pool: unknown pool \"C\"")
        );
        assert!(err(&BASE.replace("id = 2", "id = 1")).contains("vm[1].id: duplicate VM id 1"));
        assert!(
            err(&BASE.replace("priority = 2", "priority = 3"))
                .contains("vm[1].priority: priority 3 out of range")
        );
        assert!(
            err(&BASE.replace("priority = \"low\"", "priority = \"urgent\""))
                .contains("vm[0].priority")
        );
        assert!(
            err(&BASE.replace("dir = \"/tmp\"", "dir = \"/tmp\"\nsize = \"3M\""))
                .contains("regions.size: 3145728 is not a power of two")
        );
        assert!(
            err(&BASE.replace("dir = \"/tmp\"", "dir = \"/tmp\"\nsize = \"64K\""))
                .contains("regions.size: 65536 bytes is too small")
        );
        assert!(
            err(&BASE.replace("dir = \"/tmp\"", "dir = \"/tmp\"\nring_entries = 100"))
                .contains("regions.ring_entries")
        );
        assert!(
            err(&BASE.replace("dir = \"/tmp\"", "dir = \"/tmp\"\ncolour = 1"))
                .contains("unknown field `colour`")
        );
        assert!(
            err(&BASE.replace("[pools.A]", "[pools.AB]")).contains("pools.AB: pool name \"AB\"")
        );
        assert!(
            err(&BASE.replace("region = \"/tmp/custom\"", "region = \"/tmp/vgpu-vm1\""))
                .contains("vm[1].region")
        );
        assert!(err("[pools.A]\n").contains("no [[vm]]"));
        assert!(
            err(&BASE.replace("[pools.A]", "[pools.A]\naging_interval_ms = 5"))
                .contains("pools.A.aging_interval_ms")
        );
    }

    #[test]
    fn pool_backends() {
        let cuda = BASE
            .replace("[pools.A]", "[pools.A]\nbackend = \"cuda\"\ndevice = 1\nfallback = \"cpu\"");
        let c = Config::parse(&cuda).unwrap();
        assert_eq!(c.pools[&pool('A')].backend, Backend::Cuda { device: 1, fallback_to_cpu: true });
        assert_eq!(c.pools[&pool('B')].backend, Backend::Cpu);
        let plain = BASE.replace("[pools.A]", "[pools.A]\nbackend = \"cuda\"");
        assert_eq!(
            Config::parse(&plain).unwrap().pools[&pool('A')].backend,
            Backend::Cuda { device: 0, fallback_to_cpu: false }
        );
        assert!(
            err(&BASE.replace("[pools.A]", "[pools.A]\nbackend = \"tpu\""))
                .contains("unknown variant `tpu`")
        );
        assert!(
            err(&BASE.replace("[pools.A]", "[pools.A]\ndevice = 0"))
                .contains("pools.A.device: only valid with backend = \"cuda\"")
        );
        assert!(
            err(&BASE.replace("[pools.A]", "[pools.A]\nbackend = \"cuda\"\nfallback = \"cuda\""))
                .contains("pools.A.fallback")
        );
    }

    #[test]
    fn region_dir_must_exist() {
        let c = Config::parse(&BASE.replace("dir = \"/tmp\"", "dir = \"/nonexistent/x\"")).unwrap();
        assert!(
            c.check_region_dir()
                .unwrap_err()
                .to_string()
                .contains("regions.dir: /nonexistent/x does not exist")
        );
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    fn load(text: &str) -> (tempfile::TempDir, Result<Config, ConfigError>) {
        let dir = tempfile::tempdir().unwrap();
        let text = text.replace("DIR", &dir.path().display().to_string());
        let path = dir.path().join("vgpu.toml");
        std::fs::write(&path, text).unwrap();
        let result = Config::load(&path);
        (dir, result)
    }

    const GOOD: &str = "[regions]\ndir = \"DIR\"\n[mediator]\nidle_spin_us = 5\n[pools.A]\n[[vm]]\nid = 1\npool = \"A\"\npriority = 1\n[[vm]]\nid = 2\npool = \"A\"\npriority = 0\n";

    #[test]
    fn fair_pools_take_weights_and_refuse_aging() {
        let fair = GOOD
            .replace("[pools.A]", "[pools.A]\npolicy = \"fair\"")
            .replace("priority = 0\n", "priority = 0\nweight = 3\n");
        let (_dir, config) = load(&fair);
        let config = config.unwrap();
        assert_eq!(config.pools.values().next().unwrap().policy, Policy::Fair);
        assert_eq!((config.vms[0].weight, config.vms[1].weight), (1, 3));
        let zero = fair.replace("weight = 3", "weight = 0");
        assert!(
            load(&zero).1.unwrap_err().to_string().contains("vm[1].weight: must be at least 1")
        );
        let strict = GOOD.replace("priority = 0\n", "priority = 0\nweight = 2\n");
        let message = load(&strict).1.unwrap_err().to_string();
        assert!(message.contains("only used in pools with policy = \"fair\""), "{message}");
        let aging = fair.replace("policy = \"fair\"", "policy = \"fair\"\naging_interval_ms = 50");
        let message = load(&aging).1.unwrap_err().to_string();
        assert!(message.contains("aging and fair do not combine"), "{message}");
    }

    #[test]
    fn errors_name_the_file_and_line_once() {
        let (dir, result) = load(&GOOD.replace("idle_spin_us = 5", "heartbeat_interval_ms = 0"));
        let message = result.unwrap_err().to_string();
        let file = dir.path().join("vgpu.toml").display().to_string();
        assert_eq!(message, format!("{file}:4: mediator.heartbeat_interval_ms: must be positive"));
        let (_dir, result) = load(&GOOD.replace("priority = 0", "priority = 7"));
        assert!(result.unwrap_err().to_string().contains("vgpu.toml:13: vm[1].priority"));
        let (_dir, result) = load(&GOOD.replace("[pools.A]", "[pools.A]\nbogus = 1"));
        let message = result.unwrap_err().to_string();
        assert!(message.contains("vgpu.toml:6: unknown field `bogus`"), "{message}");
        assert_eq!(message.matches("bogus").count(), 1, "printed once: {message}");
    }

    #[test]
    fn timing_settings_have_upper_bounds() {
        for (key, max) in [
            ("heartbeat_interval_ms", MAX_HEARTBEAT_INTERVAL_MS),
            ("idle_spin_us", MAX_IDLE_US),
            ("max_idle_sleep_us", MAX_IDLE_US),
            ("quarantine_retry_ms", MAX_INTERVAL_MS),
        ] {
            let ok = GOOD.replace("idle_spin_us = 5", &format!("{key} = {max}"));
            assert!(load(&ok).1.is_ok(), "{key} = {max}");
            for value in [max + 1, u64::from(u32::MAX), u64::MAX / 2] {
                let text = GOOD.replace("idle_spin_us = 5", &format!("{key} = {value}"));
                let message = load(&text).1.unwrap_err().to_string();
                assert!(message.contains("above the maximum"), "{key} = {value}: {message}");
            }
        }
    }

    #[test]
    fn one_file_reached_by_two_paths_is_refused() {
        let (dir, _) = load(GOOD);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("link")).unwrap();
        for alias in ["sub/../vgpu-vm1", "link/vgpu-vm1"] {
            let text =
                GOOD.replace("priority = 0", &format!("priority = 0\nregion = \"DIR/{alias}\""));
            let message = load(&text.replace("DIR", &dir.path().display().to_string())).1;
            let message = message.unwrap_err().to_string();
            assert!(message.contains("is the same file as vm 1's region"), "{alias}: {message}");
        }
    }

    #[test]
    fn metrics_listen_is_an_address_or_absent() {
        assert_eq!(load(GOOD).1.unwrap().metrics_listen, None);
        let text = format!("{GOOD}[metrics]\nlisten = \"127.0.0.1:9464\"\n");
        assert_eq!(load(&text).1.unwrap().metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        for bad in ["localhost", "127.0.0.1", ":9464", "1.2.3.4:99999"] {
            let text = format!("{GOOD}[metrics]\nlisten = \"{bad}\"\n");
            let message = load(&text).1.unwrap_err().to_string();
            assert!(message.contains("metrics.listen"), "{bad}: {message}");
        }
    }
}
