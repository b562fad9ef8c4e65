//! systemd's notify protocol for `Type=notify` units: `READY=1` once every listener is bound
//! (channels are replayed before anything starts), `STATUS=` one-line summaries,
//! `RELOADING=1`/`STOPPING=1`, and `WATCHDOG=1` pings at half of `WATCHDOG_USEC`.
//! Without `NOTIFY_SOCKET` (not under systemd) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Clone, Copy, Debug)]
pub struct SystemdNotifier {
    enabled: bool,
}

impl SystemdNotifier {
    pub fn from_env() -> Self {
        SystemdNotifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            warn!(message = "cannot notify systemd", error = %e);
        }
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn reloading(&self) {
        self.send(&[NotifyState::Reloading, NotifyState::Status("reloading")]);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// Pings `WATCHDOG=1` from the runtime until `stop`, so a wedged runtime gets restarted.
    pub fn spawn_watchdog(&self, stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
        if !self.enabled {
            return None;
        }
        let period = sd_notify::watchdog_enabled()? / 2;
        let notifier = *self;
        info!(message = "systemd watchdog enabled", ping_every = ?period);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period.max(Duration::from_millis(10)));
            loop {
                tokio::select! {
                    _ = tick.tick() => notifier.send(&[NotifyState::Watchdog]),
                    _ = stop.cancelled() => return,
                }
            }
        }))
    }

    /// Sends `READY=1` with `status` once every flag is set (each listener bound), unless
    /// `stop` comes first. Logs `agent ready` either way it gets there.
    pub fn spawn_ready_when(
        &self,
        mut flags: Vec<(String, watch::Receiver<bool>)>,
        status: String,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let notifier = *self;
        tokio::spawn(async move {
            for (id, flag) in &mut flags {
                tokio::select! {
                    r = flag.wait_for(|ready| *ready) => {
                        if r.is_err() {
                            warn!(message = "component stopped before it was ready", component = %id);
                            return;
                        }
                    }
                    _ = stop.cancelled() => return,
                }
            }
            info!(message = "agent ready", listeners = flags.len(), status = %status);
            notifier.ready(&status);
        })
    }
}
