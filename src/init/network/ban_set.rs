//! Intrusion prevention, applying half: feeds the watched service's output
//! lines to the [`Tracker`] and adds each banned client to the firewall's
//! `banned` set, with the ban's duration as the element's timeout.
//!
//! `nft` runs on a worker thread of its own, so a burst of bans never
//! holds up the main loop. Like isolate requests, the worker reads `nft`'s
//! output to the end and leaves the exit status to the main loop's reaper.
//! `nft` reports every failure on its standard error, which is logged.

use std::net::Ipv4Addr;
use std::sync::mpsc::{self, SyncSender, TrySendError};

use super::isolate::run_nft;
use crate::init::ban::{BanDecision, BanSettings, Tracker};
use crate::net::nftables;
use crate::status::{BanStatus, BannedClient};

/// Bans waiting for the worker; more are logged and dropped.
const QUEUE_LENGTH: usize = 256;

/// The tracker of one service and the worker that applies its decisions.
#[derive(Debug)]
pub struct BanSet {
    tracker: Tracker,
    worker: Option<SyncSender<(Ipv4Addr, u32)>>,
    /// Bans that never reached `nft` because the queue was full or the
    /// worker was gone.
    lost: u64,
}

impl BanSet {
    /// Starts the worker thread for `settings`. Without the thread, bans
    /// are still decided, and each is logged as not applied.
    pub fn start(settings: BanSettings) -> Self {
        let (sender, receiver) = mpsc::sync_channel::<(Ipv4Addr, u32)>(QUEUE_LENGTH);
        let spawned = std::thread::Builder::new().name("ban".into()).spawn(move || {
            for (client, seconds) in receiver {
                add_to_set(client, seconds);
            }
        });
        let worker = match spawned {
            Ok(_) => Some(sender),
            Err(error) => {
                log::error!("ban: starting the worker thread failed: {error}; bans are logged but not applied");
                None
            }
        };
        log::info!(
            "ban: reading the output of service {}: more than {} failed authentications (HTTP {}) in {} s ban a client for {} s",
            settings.service,
            settings.failures,
            settings.statuses.iter().map(u16::to_string).collect::<Vec<_>>().join(", "),
            settings.window_secs,
            settings.ban_secs
        );
        Self { tracker: Tracker::new(settings), worker, lost: 0 }
    }

    /// Name of the watched service.
    pub fn service(&self) -> &str {
        &self.tracker.settings().service
    }

    /// Reads one output line of the watched service at `now_ms`
    /// (CLOCK_MONOTONIC milliseconds), and bans the client when the line
    /// triggers a ban.
    pub fn observe(&mut self, line: &str, now_ms: u64) {
        let Some(decision) = self.tracker.observe(line, now_ms) else { return };
        self.apply(&decision);
    }

    fn apply(&mut self, decision: &BanDecision) {
        let settings = self.tracker.settings();
        log::warn!(
            "ban: client {} banned for {} s after {} failed authentications in {} s on service {}",
            decision.client,
            settings.ban_secs,
            decision.failures,
            settings.window_secs,
            settings.service
        );
        let Some(worker) = &self.worker else {
            self.lost += 1;
            log::error!("ban: client {} not added to set {}: no worker thread", decision.client, nftables::BANNED_SET);
            return;
        };
        match worker.try_send((decision.client, settings.ban_secs)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.lost += 1;
                // Counted, and logged at powers of two, so a flood of bans
                // does not flood the log too.
                if self.lost.is_power_of_two() {
                    log::error!(
                        "ban: {QUEUE_LENGTH} bans are waiting for nft; client {} not banned ({} bans lost so far)",
                        decision.client,
                        self.lost
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.lost += 1;
                log::error!("ban: the worker thread ended; client {} not banned", decision.client);
            }
        }
    }

    /// Returns the figures for the status API at `now_ms`.
    pub fn status(&self, now_ms: u64) -> BanStatus {
        let settings = self.tracker.settings();
        BanStatus {
            service: settings.service.clone(),
            failures: settings.failures,
            window_secs: settings.window_secs,
            ban_secs: settings.ban_secs,
            bans_total: self.tracker.bans(),
            failures_total: self.tracker.failures_seen(),
            bans_lost: self.lost,
            banned: self
                .tracker
                .banned(now_ms)
                .into_iter()
                .map(|(address, left_ms)| BannedClient { address, seconds_left: left_ms.div_ceil(1000) })
                .collect(),
        }
    }
}

/// Adds `client` to the `banned` set for `seconds` and logs a failure.
fn add_to_set(client: Ipv4Addr, seconds: u32) {
    let json = nftables::to_json(&nftables::ban(client, seconds));
    match run_nft(&["-j", "-f", "-"], &json) {
        Ok((_, stderr)) if stderr.trim().is_empty() => log::info!(
            "ban: client {client} added to set inet {} {}; the firewall drops its packets",
            nftables::TABLE,
            nftables::BANNED_SET
        ),
        Ok((_, stderr)) => log::error!(
            "ban: adding client {client} to set inet {} {} failed: {}",
            nftables::TABLE,
            nftables::BANNED_SET,
            stderr.trim().replace('\n', "; ")
        ),
        Err(error) => log::error!("ban: client {client} not banned: {error}"),
    }
}
