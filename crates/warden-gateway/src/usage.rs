//! Per-agent usage counters for policy limits: requests in the last minute (one-second buckets)
//! and request bytes in the last hour (one-minute buckets), per agent instance.

use std::collections::HashMap;
use std::sync::Mutex;

use warden_model::{SpiffeId, Usage};

const SLOTS: usize = 60;
/// The stamp of a slot never used: far in the past, yet safe to subtract from.
const NEVER: i64 = i64::MIN / 4;

struct Window {
    /// (unix second, requests) per slot.
    requests: [(i64, u64); SLOTS],
    /// (unix minute, bytes) per slot.
    bytes: [(i64, u64); SLOTS],
    last_seen: i64,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            requests: [(NEVER, 0); SLOTS],
            bytes: [(NEVER, 0); SLOTS],
            last_seen: NEVER,
        }
    }
}

impl Window {
    fn usage(&self, now: i64) -> Usage {
        let minute = now.div_euclid(60);
        Usage {
            requests_last_minute: self
                .requests
                .iter()
                .filter(|(second, _)| now - second < 60)
                .map(|(_, n)| n)
                .sum(),
            bytes_last_hour: self
                .bytes
                .iter()
                .filter(|(m, _)| minute - m < 60)
                .map(|(_, n)| n)
                .sum(),
        }
    }

    fn refund_bytes(&mut self, now: i64, bytes: u64) {
        let minute = now.div_euclid(60);
        let slot = &mut self.bytes[minute.rem_euclid(SLOTS as i64) as usize];
        if slot.0 == minute {
            slot.1 = slot.1.saturating_sub(bytes);
        }
    }

    fn add(&mut self, now: i64, bytes: u64) {
        let slot = &mut self.requests[now.rem_euclid(SLOTS as i64) as usize];
        if slot.0 != now {
            *slot = (now, 0);
        }
        slot.1 += 1;
        let minute = now.div_euclid(60);
        let slot = &mut self.bytes[minute.rem_euclid(SLOTS as i64) as usize];
        if slot.0 != minute {
            *slot = (minute, 0);
        }
        slot.1 += bytes;
        self.last_seen = now;
    }
}

/// Usage of every agent seen in the last hour.
pub struct UsageMeter {
    agents: Mutex<HashMap<SpiffeId, Window>>,
    /// Past this many agents, those idle for an hour are forgotten.
    sweep_above: usize,
}

impl UsageMeter {
    pub fn new(sweep_above: usize) -> Self {
        Self {
            agents: Mutex::new(HashMap::new()),
            sweep_above,
        }
    }

    /// The agent's usage before the request at `now`.
    pub fn usage(&self, agent: &SpiffeId, now: i64) -> Usage {
        let agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        agents.get(agent).map(|w| w.usage(now)).unwrap_or_default()
    }

    /// Counts a request and its bytes, and returns the usage before it — in one step, so
    /// concurrent requests each see the others: with a limit of N, exactly N pass, however many
    /// arrive at once. The request counts whatever its outcome (a flood of refused calls still
    /// counts); its bytes are given back with [`UsageMeter::refund_bytes`] if it is not
    /// forwarded.
    pub fn reserve(&self, agent: &SpiffeId, now: i64, bytes: u64) -> Usage {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        if agents.len() >= self.sweep_above && !agents.contains_key(agent) {
            agents.retain(|_, w| now - w.last_seen < 3600);
        }
        let window = agents.entry(agent.clone()).or_default();
        let before = window.usage(now);
        window.add(now, bytes);
        before
    }

    /// Gives back the bytes of a reserved request that was not forwarded.
    pub fn refund_bytes(&self, agent: &SpiffeId, now: i64, bytes: u64) {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(window) = agents.get_mut(agent) {
            window.refund_bytes(now, bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_slide() {
        let meter = UsageMeter::new(10);
        let a = SpiffeId::new("spiffe://td/tenant/t/agent/a/1").unwrap();
        for t in 0..5 {
            meter.reserve(&a, 1_000 + t, 100);
        }
        assert_eq!(meter.usage(&a, 1_004).requests_last_minute, 5);
        assert_eq!(meter.usage(&a, 1_059).requests_last_minute, 5);
        assert_eq!(meter.usage(&a, 1_062).requests_last_minute, 2);
        assert_eq!(meter.usage(&a, 1_070).requests_last_minute, 0);
        assert_eq!(meter.usage(&a, 1_070).bytes_last_hour, 500);
        assert_eq!(meter.usage(&a, 1_000 + 3_700).bytes_last_hour, 0);
        let b = SpiffeId::new("spiffe://td/tenant/t/agent/b/1").unwrap();
        assert_eq!(meter.usage(&b, 1_004), Usage::default());
        meter.refund_bytes(&a, 1_004, 50);
        assert_eq!(meter.usage(&a, 1_070).bytes_last_hour, 450);
    }

    /// Many threads at once, each reserving and checking a limit of 10: exactly 10 pass.
    #[test]
    fn concurrent_requests_never_overshoot_a_limit() {
        let meter = std::sync::Arc::new(UsageMeter::new(10));
        let a = SpiffeId::new("spiffe://td/tenant/t/agent/a/1").unwrap();
        let passed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (meter, a, passed) = (meter.clone(), a.clone(), passed.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        if meter.reserve(&a, 5_000, 1).requests_last_minute < 10 {
                            passed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(passed.load(std::sync::atomic::Ordering::Relaxed), 10);
    }
}
