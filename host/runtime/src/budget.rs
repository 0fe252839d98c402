//! CPU budgets of plugin calls, measured in the calling thread's own CPU
//! time, not in wall-clock time.
//!
//! The engine's epoch advances every [`EPOCH_TICK`] of wall-clock time. A
//! call is armed with an epoch deadline at its budget in wall-clock time: a
//! thread cannot use more CPU time than passes, so the budget cannot be spent
//! before then. When the deadline falls, the callback reads the thread's CPU
//! clock: a call still under its budget (it was preempted on a busy machine)
//! gets its deadline extended by what is left; one over it traps. So a
//! loaded host never fails a call that would have fit on an idle one.
//!
//! The same callback interrupts a call when the host is stopping (see
//! [`crate::Runtime::interrupt_calls`]), so a looping plugin cannot hold up a
//! shutdown for the length of its budget. It checks at least every
//! [`CHECK_EVERY`] for that reason.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use wasmtime::UpdateDeadline;

use crate::engine::EPOCH_TICK;

/// The longest a call runs between two looks at the stop flag and its CPU
/// clock, in epoch ticks (100 ms).
const CHECK_EVERY: u64 = 20;

/// The CPU time the current thread has used.
pub(crate) fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Epoch ticks covering `d`, at least one.
fn ticks(d: Duration) -> u64 {
    (d.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64).max(1)
}

/// Why the last call was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    Budget,
    Stopping,
}

/// The CPU meter of one plugin instance's calls.
pub(crate) struct Meter {
    /// Set by the host when it stops: every call in progress is interrupted.
    stop: Arc<AtomicBool>,
    /// The thread's CPU time when the current call was armed.
    started: Duration,
    /// The current call's budget; `None`: unmetered (a replay of a call that
    /// succeeded before, which must not fail now).
    limit: Option<Duration>,
    /// Why the last interrupt happened.
    cause: Cause,
}

impl Meter {
    pub(crate) fn new(stop: Arc<AtomicBool>) -> Self {
        Meter {
            stop,
            started: Duration::ZERO,
            limit: None,
            cause: Cause::Budget,
        }
    }

    /// Starts metering a call with `limit` of CPU time (`None`: no limit);
    /// returns the epoch deadline to arm it with, in ticks from now.
    pub(crate) fn arm(&mut self, limit: Option<Duration>) -> u64 {
        self.started = thread_cpu_time();
        self.limit = limit;
        self.cause = Cause::Budget;
        limit.map_or(CHECK_EVERY, |l| ticks(l).min(CHECK_EVERY))
    }

    /// Whether the host is stopping: calls are refused before they start.
    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// CPU time the current call has used so far.
    pub(crate) fn used(&self) -> Duration {
        thread_cpu_time().saturating_sub(self.started)
    }

    pub(crate) fn cause(&self) -> Cause {
        self.cause
    }

    /// The epoch deadline fell: interrupt the call or let it go on.
    pub(crate) fn on_deadline(&mut self) -> UpdateDeadline {
        if self.stopping() {
            self.cause = Cause::Stopping;
            return UpdateDeadline::Interrupt;
        }
        match self.limit {
            None => UpdateDeadline::Continue(CHECK_EVERY),
            Some(limit) => match limit.checked_sub(self.used()) {
                Some(left) if !left.is_zero() => {
                    UpdateDeadline::Continue(ticks(left).min(CHECK_EVERY))
                }
                _ => {
                    self.cause = Cause::Budget;
                    UpdateDeadline::Interrupt
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(d: Duration) {
        let start = thread_cpu_time();
        while thread_cpu_time() - start < d {
            std::hint::black_box(0u64);
        }
    }

    #[test]
    fn a_preempted_call_under_its_budget_goes_on() {
        let mut meter = Meter::new(Arc::default());
        assert_eq!(meter.arm(Some(Duration::from_millis(20))), 4);
        // Sleeping is wall-clock time, not CPU time: the budget is untouched.
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(meter.on_deadline(), UpdateDeadline::Continue(n) if n >= 1));
        spin(Duration::from_millis(25));
        assert!(matches!(meter.on_deadline(), UpdateDeadline::Interrupt));
        assert_eq!(meter.cause(), Cause::Budget);
    }

    #[test]
    fn unmetered_calls_stop_only_for_shutdown() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut meter = Meter::new(stop.clone());
        assert_eq!(meter.arm(None), CHECK_EVERY);
        spin(Duration::from_millis(10));
        assert!(matches!(
            meter.on_deadline(),
            UpdateDeadline::Continue(CHECK_EVERY)
        ));
        stop.store(true, Ordering::Relaxed);
        assert!(matches!(meter.on_deadline(), UpdateDeadline::Interrupt));
        assert_eq!(meter.cause(), Cause::Stopping);
        assert!(meter.stopping());
    }
}
