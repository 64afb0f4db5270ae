//! systemd integration (`Type=notify`): `READY=1` once every region is attached or
//! quarantined, a `STATUS=` line once a second, `WATCHDOG=1` pings only while every
//! dispatcher makes progress, `STOPPING=1` at shutdown. Without `NOTIFY_SOCKET` (not
//! started by systemd) nothing is sent.
//!
//! A dispatcher makes a pass at least once per sleeping heartbeat, however idle (one
//! whose VMs all sleep on their doorbells wakes for it), or once per `max_idle_sleep`
//! when it polls: one whose pass counter has not moved for longer than both plus a
//! second is hung, and the pings stop, so that systemd restarts the mediator after
//! `WatchdogSec`.

use crate::metrics::PoolMetrics;
use sd_notify::NotifyState;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vgpu_config::MediatorConfig;

/// How soon a watchdog ping withheld for a hung dispatcher is looked at again.
const WITHHELD_PING_LOOK: Duration = Duration::from_millis(50);

/// A pool's dispatcher as the watchdog follows it.
struct Progress {
    metrics: Arc<PoolMetrics>,
    passes: u64,
    moved: Instant,
    hung: bool,
}

/// What the control thread tells the service manager.
pub(crate) struct Supervisor {
    pools: Vec<Progress>,
    /// Half the watchdog period, if systemd asked for pings.
    ping_every: Option<Duration>,
    next_ping: Instant,
    next_status: Instant,
    stall_limit: Duration,
    answered: u64,
}

impl Supervisor {
    /// Follow `pools`, whose dispatchers run with `settings`.
    pub(crate) fn new(pools: Vec<Arc<PoolMetrics>>, settings: &MediatorConfig) -> Self {
        let now = Instant::now();
        Self {
            pools: pools
                .into_iter()
                .map(|metrics| Progress {
                    passes: metrics.passes.get(),
                    metrics,
                    moved: now,
                    hung: false,
                })
                .collect(),
            ping_every: sd_notify::watchdog_enabled().map(|period| period / 2),
            next_ping: now,
            next_status: now,
            stall_limit: vgpu_config::sleeping_heartbeat(settings.heartbeat_interval)
                .max(settings.max_idle_sleep)
                + Duration::from_secs(1),
            answered: 0,
        }
    }

    /// Every region is attached or quarantined and the dispatchers run.
    pub(crate) fn ready(&mut self) {
        let status = self.status(Duration::ZERO);
        send(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    /// When the control loop should call [`Supervisor::tick`] next: the next status
    /// line (once a second) or, if sooner, the next watchdog ping.
    pub(crate) fn next_tick(&self) -> Instant {
        match self.ping_every {
            Some(_) => self.next_status.min(self.next_ping),
            None => self.next_status,
        }
    }

    /// Called by the control loop (at [`Supervisor::next_tick`], or sooner).
    pub(crate) fn tick(&mut self, now: Instant) {
        let mut all_moving = true;
        for pool in &mut self.pools {
            let passes = pool.metrics.passes.get();
            if passes != pool.passes {
                pool.passes = passes;
                pool.moved = now;
                if pool.hung {
                    pool.hung = false;
                    tracing::warn!("Pool {}: dispatcher making progress again", pool.metrics.pool);
                }
            } else if now - pool.moved > self.stall_limit {
                if !pool.hung {
                    pool.hung = true;
                    tracing::error!(
                        "Pool {}: dispatcher made no progress for {:?}: watchdog pings stop",
                        pool.metrics.pool,
                        now - pool.moved
                    );
                }
                all_moving = false;
            }
        }
        if let Some(every) = self.ping_every
            && now >= self.next_ping
        {
            if all_moving {
                self.next_ping = now + every;
                send(&[NotifyState::Watchdog]);
            } else {
                // Withheld: looked at again soon, so a dispatcher that moves again is
                // pinged for in time, but not at once (the control loop would spin).
                self.next_ping = now + every.min(WITHHELD_PING_LOOK);
            }
        }
        if now >= self.next_status {
            let status = self.status(Duration::from_secs(1));
            self.next_status = now + Duration::from_secs(1);
            send(&[NotifyState::Status(&status)]);
        }
    }

    /// Shutdown has begun.
    pub(crate) fn stopping() {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// The one-line summary: VMs served and quarantined, requests per second over the
    /// `window` since the last summary.
    fn status(&mut self, window: Duration) -> String {
        let vms = || self.pools.iter().flat_map(|p| p.metrics.vms.iter());
        let quarantined = vms().filter(|vm| vm.is_quarantined()).count();
        let served = vms().count() - quarantined;
        let answered: u64 = vms().map(|vm| vm.answered_total()).sum();
        let rate = if window.is_zero() {
            0.0
        } else {
            answered.saturating_sub(self.answered) as f64 / window.as_secs_f64()
        };
        self.answered = answered;
        let hung = self.pools.iter().filter(|p| p.hung).count();
        let hung = if hung == 0 { String::new() } else { format!(", {hung} dispatchers hung") };
        format!("serving {served} VMs, {quarantined} quarantined, {rate:.0} requests/s{hung}")
    }
}

fn send(states: &[NotifyState<'_>]) {
    // The service manager going away is not the guests' problem: logged at debug.
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgpu_ring::PoolId;

    /// While a dispatcher is hung the ping is withheld, and the control loop's next
    /// tick is a short while ahead, not in the past (where its wait would return at
    /// once, over and over).
    #[test]
    fn a_withheld_ping_is_looked_at_again_soon_not_at_once() {
        let metrics = Arc::new(PoolMetrics::new(
            PoolId::new(b'A').unwrap(),
            ("cpu", "cpu".to_owned()),
            Vec::new(),
        ));
        let start = Instant::now();
        let mut supervisor = Supervisor {
            pools: vec![Progress { metrics, passes: 0, moved: start, hung: false }],
            ping_every: Some(Duration::from_secs(5)),
            next_ping: start,
            next_status: start + Duration::from_secs(3600),
            stall_limit: Duration::from_secs(1),
            answered: 0,
        };
        // No pass for 2 s, past the stall limit: hung, the ping due and withheld.
        let later = start + Duration::from_secs(2);
        supervisor.tick(later);
        assert!(supervisor.pools[0].hung);
        assert!(supervisor.next_tick() > later, "the next tick is ahead");
        assert!(supervisor.next_tick() <= later + WITHHELD_PING_LOOK, "and soon");
    }
}
