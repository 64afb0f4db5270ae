//! The host mediator daemon: attaches every VM's region, drains the guests' request
//! rings into per-pool priority queues, executes the requests and answers on the
//! response rings. See `docs/ARCHITECTURE.md` for the thread model.
//!
//! - [`queue`]: a pool's priority queue (strict or aging).
//! - [`validate()`]: checking an untrusted request against the host's configuration.
//! - [`executor`]: the [`Executor`](executor::Executor) trait and the CPU executor.
//! - [`dispatcher`]: a pool's dispatcher thread; `port`: one VM as it sees it.
//! - [`log_limit`]: bounding the log lines a guest can cause.
//! - [`metrics`]: values the dispatchers keep, served in the Prometheus format.
//! - [`daemon`]: attaching regions, the session epoch, the heartbeat, shutdown.
//! - [`cli`]: the command line.
//! - [`sandbox`]: a mediator on a thread, serving a temporary region (examples, tests).
// Only the CUDA executor (feature `cuda`) allows `unsafe`: kernel launches, and driver
// calls that register arenas and copy them by DMA.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod cli;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod daemon;
pub mod dispatcher;
pub mod executor;
pub mod log_limit;
pub mod metrics;
mod port;
pub mod queue;
pub mod sandbox;
mod supervise;
mod validate;

pub use validate::validate;
