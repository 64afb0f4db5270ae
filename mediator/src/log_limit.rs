//! Bounding the log lines a guest can cause: per VM and per kind of problem, at most
//! one line per [`LogLimiter::INTERVAL`], and the next line says how many were
//! suppressed meanwhile. A hostile guest at full speed thus writes a few lines a
//! minute, not one per bad request.

use std::time::{Duration, Instant};

/// A kind of guest-caused problem; each has its own budget.
///
/// ```
/// use std::time::Instant;
/// use vgpu_mediator::log_limit::{LogLimiter, Problem};
/// let mut limit = LogLimiter::default();
/// let now = Instant::now();
/// // Each kind has a budget of its own.
/// assert_eq!(limit.admit(Problem::IdentityClaim, now), Some(0));
/// assert_eq!(limit.admit(Problem::Reset, now), Some(0));
/// assert_eq!(limit.admit(Problem::Reset, now), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// A request claimed another pool, priority or VM id.
    IdentityClaim,
    /// A ring was found corrupt and isolated.
    Poisoned,
    /// The guest asked for a ring reset.
    Reset,
}

impl Problem {
    const COUNT: usize = 3;

    const fn index(self) -> usize {
        self as usize
    }
}

/// One VM's log budget.
///
/// ```
/// use std::time::Instant;
/// use vgpu_mediator::log_limit::{LogLimiter, Problem, suppressed_note};
/// let mut limit = LogLimiter::default();
/// let start = Instant::now();
/// let mut lines = 0;
/// // A guest at full speed: a million bad requests within one interval, one line.
/// for _ in 0..1_000_000 {
///     if let Some(suppressed) = limit.admit(Problem::IdentityClaim, start) {
///         lines += 1;
///         println!("vm 3 claims another identity{}", suppressed_note(suppressed));
///     }
/// }
/// assert_eq!(lines, 1);
/// ```
#[derive(Debug, Default)]
pub struct LogLimiter {
    last: [Option<Instant>; Problem::COUNT],
    suppressed: [u64; Problem::COUNT],
}

impl LogLimiter {
    /// Shortest time between two lines of one kind for one VM.
    pub const INTERVAL: Duration = Duration::from_secs(10);

    /// Whether a line about `problem` may be logged at `now`: `Some(n)` with the
    /// number of lines suppressed since the last one, or `None` (counted as
    /// suppressed).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use vgpu_mediator::log_limit::{LogLimiter, Problem};
    /// let mut limit = LogLimiter::default();
    /// let t = Instant::now();
    /// assert_eq!(limit.admit(Problem::IdentityClaim, t), Some(0));
    /// assert_eq!(limit.admit(Problem::IdentityClaim, t + Duration::from_secs(1)), None);
    /// assert_eq!(limit.admit(Problem::Poisoned, t), Some(0)); // another kind
    /// assert_eq!(limit.admit(Problem::IdentityClaim, t + Duration::from_secs(11)), Some(1));
    /// ```
    pub fn admit(&mut self, problem: Problem, now: Instant) -> Option<u64> {
        let i = problem.index();
        match self.last[i] {
            Some(last) if now.saturating_duration_since(last) < Self::INTERVAL => {
                self.suppressed[i] += 1;
                None
            }
            _ => {
                self.last[i] = Some(now);
                Some(std::mem::take(&mut self.suppressed[i]))
            }
        }
    }
}

/// The tail a log line carries when lines before it were suppressed.
///
/// ```
/// use vgpu_mediator::log_limit::suppressed_note;
/// assert_eq!(suppressed_note(0), "");
/// assert_eq!(suppressed_note(41), " (41 similar lines suppressed)");
/// ```
#[must_use]
pub fn suppressed_note(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(" ({suppressed} similar lines suppressed)")
    }
}
