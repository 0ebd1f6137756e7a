//! Intrusion prevention, deciding half: a tracker that reads access-log
//! lines of one service, counts failed authentications per client in a
//! sliding window, and decides when a client is banned. It is pure: time
//! comes in as milliseconds, and [`super::network::ban_set`] applies the
//! decisions to the firewall's `banned` set.
//!
//! A line counts when it contains the tokens `client=<IPv4>` and
//! `status=<HTTP code>`, separated by whitespace, for example
//! `ztms-access client=10.0.2.2 status=401 method=GET uri=/`. Other lines,
//! and lines whose address or code does not parse, are ignored.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::config::Ban;

/// Clients whose failures are tracked at once. When a new client arrives
/// and the table is full, the client with the oldest latest failure is
/// forgotten, so a flood of source addresses costs bounded memory.
pub const MAX_TRACKED_CLIENTS: usize = 4096;
/// Banned clients remembered for the status API, for the same reason.
pub const MAX_LISTED_BANS: usize = 4096;

/// The `[ban]` settings that ztms-init needs, from the definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanSettings {
    /// Service whose output is read.
    pub service: String,
    /// Failed authentications allowed within the window; the next one bans.
    pub failures: u32,
    pub window_secs: u32,
    pub ban_secs: u32,
    /// HTTP status codes that count as a failed authentication.
    pub statuses: Vec<u16>,
}

impl BanSettings {
    /// Returns the settings of `ban`, or None when no service is watched.
    pub fn from_definition(ban: &Ban) -> Option<Self> {
        Some(Self {
            service: ban.service.clone()?,
            failures: ban.failures,
            window_secs: ban.window_secs,
            ban_secs: ban.ban_secs,
            statuses: ban.statuses.clone(),
        })
    }
}

/// A client to add to the `banned` set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanDecision {
    pub client: Ipv4Addr,
    /// Failed authentications within the window, the last one included.
    pub failures: usize,
}

/// Failure timestamps per client and the bans decided so far.
#[derive(Debug)]
pub struct Tracker {
    settings: BanSettings,
    /// Milliseconds of each client's failures within the window, oldest first.
    clients: HashMap<Ipv4Addr, VecDeque<u64>>,
    /// End of each ban, in milliseconds, for the clients banned by this
    /// tracker.
    banned: HashMap<Ipv4Addr, u64>,
    failures_seen: u64,
    bans: u64,
}

/// Extracts the client address and the HTTP status of an access-log line.
pub fn parse_line(line: &str) -> Option<(Ipv4Addr, u16)> {
    let mut client = None;
    let mut status = None;
    for token in line.split_whitespace() {
        if let Some(value) = token.strip_prefix("client=") {
            client = Some(value.parse::<Ipv4Addr>().ok()?);
        } else if let Some(value) = token.strip_prefix("status=") {
            status = Some(value.parse::<u16>().ok()?);
        }
    }
    Some((client?, status?))
}

impl Tracker {
    pub fn new(settings: BanSettings) -> Self {
        Self {
            settings,
            clients: HashMap::new(),
            banned: HashMap::new(),
            failures_seen: 0,
            bans: 0,
        }
    }

    pub fn settings(&self) -> &BanSettings {
        &self.settings
    }

    /// Failed authentications counted since the start.
    pub fn failures_seen(&self) -> u64 {
        self.failures_seen
    }

    /// Bans decided since the start.
    pub fn bans(&self) -> u64 {
        self.bans
    }

    /// Clients still banned at `now_ms` and the milliseconds each has left,
    /// sorted by address.
    pub fn banned(&self, now_ms: u64) -> Vec<(Ipv4Addr, u64)> {
        let mut banned: Vec<(Ipv4Addr, u64)> = self
            .banned
            .iter()
            .filter(|(_, until)| **until > now_ms)
            .map(|(client, until)| (*client, until - now_ms))
            .collect();
        banned.sort_unstable();
        banned
    }

    /// Reads one output line of the watched service at `now_ms` and returns
    /// the ban it triggers, if any.
    pub fn observe(&mut self, line: &str, now_ms: u64) -> Option<BanDecision> {
        let (client, status) = parse_line(line)?;
        if !self.settings.statuses.contains(&status) {
            return None;
        }
        self.failures_seen += 1;
        // A banned client's packets are dropped, but lines of requests that
        // were in flight may still arrive, and they must not ban it again.
        // NOTE: a client deleted from the set by hand is therefore not
        // banned again before its ban would have ended.
        if self.banned.get(&client).is_some_and(|until| *until > now_ms) {
            return None;
        }

        let window_ms = u64::from(self.settings.window_secs) * 1000;
        let allowed = self.settings.failures as usize;
        if !self.clients.contains_key(&client) && self.clients.len() >= MAX_TRACKED_CLIENTS {
            self.forget_stalest_client();
        }
        let times = self.clients.entry(client).or_default();
        while times.front().is_some_and(|at| now_ms.saturating_sub(*at) >= window_ms) {
            times.pop_front();
        }
        times.push_back(now_ms);
        // Only the last `allowed + 1` failures decide a ban.
        while times.len() > allowed + 1 {
            times.pop_front();
        }
        if times.len() <= allowed {
            return None;
        }

        let failures = times.len();
        self.clients.remove(&client);
        self.remember_ban(client, now_ms);
        self.bans += 1;
        Some(BanDecision { client, failures })
    }

    fn forget_stalest_client(&mut self) {
        let stalest = self
            .clients
            .iter()
            .min_by_key(|(_, times)| times.back().copied().unwrap_or(0))
            .map(|(client, _)| *client);
        if let Some(client) = stalest {
            self.clients.remove(&client);
        }
    }

    fn remember_ban(&mut self, client: Ipv4Addr, now_ms: u64) {
        self.banned.retain(|_, until| *until > now_ms);
        if self.banned.len() >= MAX_LISTED_BANS {
            let soonest = self.banned.iter().min_by_key(|(_, until)| **until).map(|(client, _)| *client);
            if let Some(soonest) = soonest {
                self.banned.remove(&soonest);
            }
        }
        let until = now_ms + u64::from(self.settings.ban_secs) * 1000;
        self.banned.insert(client, until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

    fn tracker() -> Tracker {
        Tracker::new(BanSettings {
            service: "proxy".into(),
            failures: 3,
            window_secs: 60,
            ban_secs: 600,
            statuses: vec![401, 403],
        })
    }

    fn line(client: &str, status: u16) -> String {
        format!("ztms-access client={client} status={status} method=GET uri=/qbittorrent/")
    }

    #[test]
    fn line_parses_client_and_status() {
        assert_eq!(parse_line(&line("10.0.2.2", 401)), Some((CLIENT, 401)));
        assert_eq!(parse_line("status=200 x client=10.0.2.2"), Some((CLIENT, 200)));
    }

    #[test]
    fn line_without_tokens_is_ignored() {
        assert_eq!(parse_line("nginx: worker process started"), None);
        assert_eq!(parse_line("client=10.0.2.2"), None);
        assert_eq!(parse_line("status=401"), None);
    }

    #[test]
    fn bad_address_is_ignored() {
        assert_eq!(parse_line("client=10.0.2.300 status=401"), None);
        assert_eq!(parse_line("client=::1 status=401"), None);
        assert_eq!(parse_line("client=10.0.2.2 status=abc"), None);
    }

    #[test]
    fn fourth_failure_within_window_bans_client() {
        let mut tracker = tracker();
        for at in [0, 1_000, 2_000] {
            assert_eq!(tracker.observe(&line("10.0.2.2", 401), at), None);
        }
        let decision = tracker.observe(&line("10.0.2.2", 403), 3_000);
        assert_eq!(decision, Some(BanDecision { client: CLIENT, failures: 4 }));
        assert_eq!(tracker.bans(), 1);
        assert_eq!(tracker.failures_seen(), 4);
    }

    #[test]
    fn failures_outside_window_are_forgotten() {
        let mut tracker = tracker();
        for at in [0, 1_000, 2_000] {
            tracker.observe(&line("10.0.2.2", 401), at);
        }
        // The window is 60 s: at 61 s the failures at 0 s and 1 s are gone.
        assert_eq!(tracker.observe(&line("10.0.2.2", 401), 61_000), None);
        assert_eq!(tracker.observe(&line("10.0.2.2", 401), 61_500), None);
        assert!(tracker.observe(&line("10.0.2.2", 401), 61_900).is_some());
    }

    #[test]
    fn other_client_unaffected() {
        let mut tracker = tracker();
        for at in [0, 1_000, 2_000] {
            tracker.observe(&line("10.0.2.2", 401), at);
        }
        assert_eq!(tracker.observe(&line("10.0.2.3", 401), 3_000), None);
        assert!(tracker.observe(&line("10.0.2.2", 401), 3_000).is_some());
        assert_eq!(tracker.banned(3_000), [(CLIENT, 600_000)]);
    }

    #[test]
    fn success_lines_do_not_count() {
        let mut tracker = tracker();
        for at in 0..10 {
            assert_eq!(tracker.observe(&line("10.0.2.2", 200), at * 100), None);
        }
        assert_eq!(tracker.failures_seen(), 0);
        assert_eq!(tracker.bans(), 0);
    }

    #[test]
    fn banned_client_is_not_banned_again() {
        let mut tracker = tracker();
        for at in 0..4 {
            tracker.observe(&line("10.0.2.2", 401), at);
        }
        for at in 4..20 {
            assert_eq!(tracker.observe(&line("10.0.2.2", 401), at), None);
        }
        assert_eq!(tracker.bans(), 1);
    }

    #[test]
    fn ban_expires_after_ban_secs() {
        let mut tracker = tracker();
        for at in 0..4 {
            tracker.observe(&line("10.0.2.2", 401), at);
        }
        // The fourth failure at 3 ms banned the client until 600_003 ms.
        assert_eq!(tracker.banned(600_002), [(CLIENT, 1)]);
        assert!(tracker.banned(600_003).is_empty());
        for at in 600_003..600_007 {
            tracker.observe(&line("10.0.2.2", 401), at);
        }
        assert_eq!(tracker.bans(), 2);
    }

    #[test]
    fn tracked_clients_are_bounded() {
        let mut tracker = tracker();
        for index in 0..(MAX_TRACKED_CLIENTS as u32 + 100) {
            let client = Ipv4Addr::from(0x0a00_0000 + index);
            tracker.observe(&line(&client.to_string(), 401), u64::from(index));
        }
        assert_eq!(tracker.clients.len(), MAX_TRACKED_CLIENTS);
        // The first clients were the stalest and are gone.
        assert!(!tracker.clients.contains_key(&Ipv4Addr::from(0x0a00_0000)));
        assert!(tracker.clients.contains_key(&Ipv4Addr::from(0x0a00_0000 + MAX_TRACKED_CLIENTS as u32 + 99)));
    }

    #[test]
    fn settings_are_off_without_service() {
        assert_eq!(BanSettings::from_definition(&Ban::default()), None);
        let ban = Ban { service: Some("proxy".into()), ..Ban::default() };
        assert_eq!(BanSettings::from_definition(&ban).map(|settings| settings.failures), Some(3));
    }
}
