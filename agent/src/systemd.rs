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
    ///
    /// With `give_up_after` (after a reload, when systemd waits for `READY=1` to end the
    /// reload job), `READY=1` goes out at that deadline anyway, its status naming the
    /// components not listening yet: the rest of the agent runs, and a reload that added a
    /// source whose port is taken must not leave the unit "reloading" forever.
    pub fn spawn_ready_when(
        &self,
        mut flags: Vec<(String, watch::Receiver<bool>)>,
        status: String,
        stop: CancellationToken,
        give_up_after: Option<Duration>,
    ) -> tokio::task::JoinHandle<()> {
        let notifier = *self;
        tokio::spawn(async move {
            let deadline = give_up_after.map(|d| tokio::time::Instant::now() + d);
            let expired = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(expired);
            let mut pending = Vec::new();
            for (id, flag) in &mut flags {
                if !pending.is_empty() {
                    if !*flag.borrow() {
                        pending.push(id.clone());
                    }
                    continue;
                }
                tokio::select! {
                    r = flag.wait_for(|ready| *ready) => {
                        if r.is_err() {
                            warn!(message = "component stopped before it was ready", component = %id);
                            return;
                        }
                    }
                    _ = &mut expired => pending.push(id.clone()),
                    _ = stop.cancelled() => return,
                }
            }
            if pending.is_empty() {
                info!(message = "agent ready", listeners = flags.len(), status = %status);
                notifier.ready(&status);
            } else {
                let status = format!("{status}; not listening yet: {}", pending.join(", "));
                warn!(message = "agent ready, but some listeners are not bound yet", not_listening = %pending.join(", "), status = %status);
                notifier.ready(&status);
            }
        })
    }
}
