//! Decides, from the interfaces that the kernel has, which WireGuard
//! interfaces ztms-init must re-create at run time. The decision is pure:
//! the caller lists `/sys/class/net`, runs the re-creations and reports
//! their outcome back ([`LinkWatch::record`]).
//!
//! An interface that fails to come back is retried with the restart
//! backoff of services ([`Backoff`]): 1 s, then doubling up to 60 s. The
//! kill switch does not depend on this: the nftables drop and the
//! `unreachable default` of the tunnel table stay while `wg-vpn` is gone.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::init::backoff::Backoff;

/// Interval of the checks while every watched interface is present.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// State of one watched interface.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LinkState {
    Present,
    /// Missing since `since`; the next re-creation is due at `retry_at`.
    Missing { since: Instant, attempts: u32, retry_at: Instant },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct WatchedLink {
    name: String,
    state: LinkState,
    backoff: Backoff,
}

/// Outcome of one check for one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The interface is missing and a re-creation is due; `attempt` counts
    /// from 1, and `missing_for` is the time since it was first missed.
    Recreate { interface: String, attempt: u32, missing_for: Duration },
    /// The interface was missing and is present again without a
    /// re-creation from ztms-init.
    Returned { interface: String },
}

/// The watched interfaces and their state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkWatch {
    links: Vec<WatchedLink>,
    next_check: Instant,
}

impl LinkWatch {
    /// Watches `interfaces`. An interface whose boot configuration failed
    /// is passed in `failed_at_boot`, and its first retry is due at once.
    pub fn new(interfaces: &[String], failed_at_boot: &[String], now: Instant) -> Self {
        let links = interfaces
            .iter()
            .map(|name| WatchedLink {
                name: name.clone(),
                state: if failed_at_boot.contains(name) {
                    LinkState::Missing { since: now, attempts: 0, retry_at: now }
                } else {
                    LinkState::Present
                },
                backoff: Backoff::default(),
            })
            .collect();
        Self { links, next_check: now }
    }

    /// Returns the time of the next check.
    pub fn next_deadline(&self) -> Instant {
        let retries = self.links.iter().filter_map(|link| match link.state {
            LinkState::Missing { retry_at, .. } => Some(retry_at),
            LinkState::Present => None,
        });
        retries.fold(self.next_check, Instant::min)
    }

    /// Compares the watched interfaces with `present`, the interfaces that
    /// the kernel has at `now`, and returns what to do. Returns nothing
    /// before [`next_deadline`](Self::next_deadline).
    pub fn check(&mut self, present: &BTreeSet<String>, now: Instant) -> Vec<Decision> {
        if now < self.next_deadline() {
            return Vec::new();
        }
        self.next_check = now + CHECK_INTERVAL;
        let mut decisions = Vec::new();
        for link in &mut self.links {
            let exists = present.contains(&link.name);
            match (&mut link.state, exists) {
                (LinkState::Present, true) => {}
                (LinkState::Present, false) => {
                    link.state = LinkState::Missing { since: now, attempts: 1, retry_at: now };
                    decisions.push(Decision::Recreate { interface: link.name.clone(), attempt: 1, missing_for: Duration::ZERO });
                }
                (LinkState::Missing { .. }, true) => {
                    link.state = LinkState::Present;
                    link.backoff = Backoff::default();
                    decisions.push(Decision::Returned { interface: link.name.clone() });
                }
                (LinkState::Missing { since, attempts, retry_at }, false) => {
                    if *retry_at <= now {
                        *attempts += 1;
                        decisions.push(Decision::Recreate {
                            interface: link.name.clone(),
                            attempt: *attempts,
                            missing_for: now.saturating_duration_since(*since),
                        });
                    }
                }
            }
        }
        decisions
    }

    /// Records the outcome of a re-creation of `interface` at `now`.
    /// Returns the delay before the next try after a failure.
    pub fn record(&mut self, interface: &str, succeeded: bool, now: Instant) -> Option<Duration> {
        let link = self.links.iter_mut().find(|link| link.name == interface)?;
        if succeeded {
            link.state = LinkState::Present;
            link.backoff = Backoff::default();
            return None;
        }
        let delay = link.backoff.next_delay(Duration::ZERO);
        if let LinkState::Missing { retry_at, .. } = &mut link.state {
            *retry_at = now + delay;
        }
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    fn present(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    fn recreate(interface: &str, attempt: u32, missing_for: Duration) -> Decision {
        Decision::Recreate { interface: interface.into(), attempt, missing_for }
    }

    #[test]
    fn present_interfaces_need_nothing() {
        let start = Instant::now();
        let mut watch = LinkWatch::new(&names(&["wg-remote", "wg-vpn"]), &[], start);
        assert!(watch.check(&present(&["lo", "eth0", "wg-remote", "wg-vpn"]), start).is_empty());
        assert_eq!(watch.next_deadline(), start + CHECK_INTERVAL);
    }

    #[test]
    fn missing_interface_is_recreated_at_once() {
        let start = Instant::now();
        let mut watch = LinkWatch::new(&names(&["wg-remote", "wg-vpn"]), &[], start);
        let decisions = watch.check(&present(&["eth0", "wg-remote"]), start);
        assert_eq!(decisions, [recreate("wg-vpn", 1, Duration::ZERO)]);
    }

    #[test]
    fn no_check_before_the_interval() {
        let start = Instant::now();
        let mut watch = LinkWatch::new(&names(&["wg-vpn"]), &[], start);
        watch.check(&present(&["wg-vpn"]), start);
        assert!(watch.check(&present(&[]), start + Duration::from_secs(4)).is_empty());
        assert_eq!(watch.check(&present(&[]), start + CHECK_INTERVAL).len(), 1);
    }

    #[test]
    fn successful_recreation_ends_the_retries() {
        let start = Instant::now();
        let mut watch = LinkWatch::new(&names(&["wg-vpn"]), &[], start);
        watch.check(&present(&[]), start);
        assert_eq!(watch.record("wg-vpn", true, start), None);
        let later = start + CHECK_INTERVAL;
        assert!(watch.check(&present(&["wg-vpn"]), later).is_empty());
    }

    #[test]
    fn failed_recreation_retries_with_backoff() {
        let start = Instant::now();
        let mut watch = LinkWatch::new(&names(&["wg-vpn"]), &[], start);
        watch.check(&present(&[]), start);
        assert_eq!(watch.record("wg-vpn", false, start), Some(Duration::from_secs(1)));

        let first_retry = start + Duration::from_secs(1);
        assert_eq!(watch.next_deadline(), first_retry);
        assert_eq!(watch.check(&present(&[]), first_retry), [recreate("wg-vpn", 2, Duration::from_secs(1))]);
        assert_eq!(watch.record("wg-vpn", false, first_retry), Some(Duration::from_secs(2)));
        assert!(watch.check(&present(&[]), first_retry + Duration::from_secs(1)).is_empty());

        let second_retry = first_retry + Duration::from_secs(2);
        assert_eq!(watch.check(&present(&[]), second_retry), [recreate("wg-vpn", 3, Duration::from_secs(3))]);
    }

    #[test]
    fn backoff_delays_are_capped() {
        let start = Instant::now();
        let mut watch = LinkWatch::new(&names(&["wg-vpn"]), &[], start);
        let mut now = start;
        let mut delays = Vec::new();
        for _ in 0..9 {
            watch.check(&present(&[]), now);
            let delay = watch.record("wg-vpn", false, now).expect("a retry delay");
            delays.push(delay.as_secs());
            now += delay;
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn backoff_restarts_after_a_success() {
        let start = Instant::now();
        let mut watch = LinkWatch::new(&names(&["wg-vpn"]), &[], start);
        watch.check(&present(&[]), start);
        watch.record("wg-vpn", false, start);
        let retry = start + Duration::from_secs(1);
        watch.check(&present(&[]), retry);
        watch.record("wg-vpn", true, retry);

        let gone_again = retry + CHECK_INTERVAL;
        assert_eq!(watch.check(&present(&[]), gone_again), [recreate("wg-vpn", 1, Duration::ZERO)]);
        assert_eq!(watch.record("wg-vpn", false, gone_again), Some(Duration::from_secs(1)));
    }

    #[test]
    fn interface_that_returns_by_itself_is_reported() {
        let start = Instant::now();
        let mut watch = LinkWatch::new(&names(&["wg-vpn"]), &[], start);
        watch.check(&present(&[]), start);
        watch.record("wg-vpn", false, start);
        let retry = start + Duration::from_secs(1);
        assert_eq!(watch.check(&present(&["wg-vpn"]), retry), [Decision::Returned { interface: "wg-vpn".into() }]);
        assert!(watch.check(&present(&["wg-vpn"]), retry + CHECK_INTERVAL).is_empty());
    }

    #[test]
    fn boot_failure_is_retried_at_once() {
        let start = Instant::now();
        let mut watch = LinkWatch::new(&names(&["wg-remote", "wg-vpn"]), &names(&["wg-vpn"]), start);
        assert_eq!(watch.check(&present(&["wg-remote"]), start), [recreate("wg-vpn", 1, Duration::ZERO)]);
    }

    #[test]
    fn each_interface_has_its_own_backoff() {
        let start = Instant::now();
        let mut watch = LinkWatch::new(&names(&["wg-remote", "wg-vpn"]), &[], start);
        let decisions = watch.check(&present(&[]), start);
        assert_eq!(decisions, [recreate("wg-remote", 1, Duration::ZERO), recreate("wg-vpn", 1, Duration::ZERO)]);
        watch.record("wg-remote", true, start);
        watch.record("wg-vpn", false, start);
        let retry = start + Duration::from_secs(1);
        assert_eq!(watch.check(&present(&["wg-remote"]), retry), [recreate("wg-vpn", 2, Duration::from_secs(1))]);
    }

    #[test]
    fn unknown_interface_is_not_recorded() {
        let start = Instant::now();
        let mut watch = LinkWatch::new(&names(&["wg-vpn"]), &[], start);
        assert_eq!(watch.record("eth0", false, start), None);
    }
}
