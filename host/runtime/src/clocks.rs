//! The monotonic clock a plugin sees (`wasi:clocks/monotonic-clock`), and
//! the cancellation that ends a run from outside.
//!
//! WASI's own clock lets a guest subscribe to any instant and block in
//! `wasi:io/poll` until it passes: a sleep of `Duration::MAX` would hold a
//! job slot forever, and epoch interruption never fires inside a host call.
//! Here every timer is cut at the run's deadline and wakes on cancellation,
//! so no poll outlives either; the next step of guest code or the next host
//! call then ends the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use crate::engine::EPOCH_TICK;
use crate::sandbox::{Meter, StoreState};

/// Ends a run from outside: the daemon's cancel and its shutdown. Cloned
/// into the run; cancelling interrupts guest code at the next epoch tick and
/// wakes any timer the guest waits on.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<CancelState>);

#[derive(Debug, Default)]
struct CancelState {
    cancelled: AtomicBool,
    wake: tokio::sync::Notify,
}

impl CancelToken {
    /// A token nobody has cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// End every run holding this token. Idempotent.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        self.0.wake.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Completes once the token is cancelled.
    async fn cancelled(&self) {
        loop {
            let notified = self.0.wake.notified();
            tokio::pin!(notified);
            // Registered before the check, so a cancel in between still wakes us.
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// What the clock's host functions see of a run's store.
pub(crate) struct ClockView<'a> {
    resources: &'a mut ResourceTable,
    meter: &'a mut Meter,
}

/// Marker for linking the clock.
pub(crate) struct RunClock;

impl HasData for RunClock {
    type Data<'a> = ClockView<'a>;
}

impl StoreState {
    pub(crate) fn clock_view(&mut self) -> ClockView<'_> {
        let (resources, meter) = self.resources_and_meter();
        ClockView { resources, meter }
    }
}

pub(crate) fn add_to_linker(linker: &mut wasmtime::component::Linker<StoreState>) -> wasmtime::Result<()> {
    monotonic_clock::add_to_linker::<StoreState, RunClock>(linker, StoreState::clock_view)
}

impl ClockView<'_> {
    /// A timer at `now + after`, cut at the run's deadline.
    fn timer(&mut self, after: Duration) -> wasmtime::Result<Resource<DynPollable>> {
        self.meter.check_deadline()?;
        let now = Instant::now();
        let at = now.checked_add(after).map_or(self.meter.deadline, |at| at.min(self.meter.deadline));
        let timer = self.resources.push(Timer { at: at.into(), cancel: self.meter.cancel.clone() })?;
        subscribe(self.resources, timer)
    }
}

impl monotonic_clock::Host for ClockView<'_> {
    /// Time since the run started, in whole epoch ticks: no finer than the
    /// deadline's own granularity.
    fn now(&mut self) -> wasmtime::Result<u64> {
        let tick = EPOCH_TICK.as_nanos();
        Ok((self.meter.started.elapsed().as_nanos() / tick * tick) as u64)
    }

    fn resolution(&mut self) -> wasmtime::Result<u64> {
        Ok(EPOCH_TICK.as_nanos() as u64)
    }

    fn subscribe_instant(&mut self, when: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let now = self.now()?;
        self.timer(Duration::from_nanos(when.saturating_sub(now)))
    }

    fn subscribe_duration(&mut self, after: u64) -> wasmtime::Result<Resource<DynPollable>> {
        self.timer(Duration::from_nanos(after))
    }
}

/// A pollable that is ready at its instant, or as soon as the run is
/// cancelled, whichever comes first. Its instant never lies past the run's
/// deadline.
struct Timer {
    at: tokio::time::Instant,
    cancel: CancelToken,
}

#[wasmtime_wasi::async_trait]
impl Pollable for Timer {
    async fn ready(&mut self) {
        tokio::select! {
            () = tokio::time::sleep_until(self.at) => {}
            () = self.cancel.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_wakes_a_waiting_timer_and_a_late_one_is_ready_at_once() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let cancel = CancelToken::new();
        let mut timer =
            Timer { at: tokio::time::Instant::now() + Duration::from_secs(3600), cancel: cancel.clone() };
        let canceller = std::thread::spawn({
            let cancel = cancel.clone();
            move || {
                std::thread::sleep(Duration::from_millis(50));
                cancel.cancel();
            }
        });
        let woken = |timer: &mut Timer| {
            runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(30), timer.ready()).await })
                .is_ok()
        };
        assert!(woken(&mut timer), "the cancel woke the hour-long timer");
        canceller.join().unwrap();
        // Cancelled before the wait starts: ready at once.
        assert!(woken(&mut timer));
    }
}
