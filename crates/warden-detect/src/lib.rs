//! Detectors over the stream of decisions, off the request path: an agent sweeping many hosts on
//! one port (a host scan) or many ports on one host (a port scan) in a sliding window — Zeek's
//! defaults, 25 hosts or 15 ports in 5 minutes, refused attempts counted too — a storm of
//! refusals (probing), and a toxic flow: content carrying an injection reaches the agent and,
//! within a few calls, the agent attempts something sensitive (egress, a send- or delete-class
//! tool, a write to an API) — the indirect-injection kill chain; and one grant presented from two
//! addresses within the window (a stolen credential in use); and new reach: once an agent's
//! baseline has been learned, a call to a tool, route or destination it never used before. Each
//! detection names its evidence: the decisions that made it.
//!
//! Memory is bounded whatever the stream holds: at most `max_entries` remembered attempts in all
//! (an attempt is a destination and the decision id; ~100 bytes each), the least recently seen
//! agent forgotten first when an attacker's flood of distinct hosts would grow it past that.

use std::collections::{HashMap, HashSet, VecDeque};

/// Thresholds and bounds.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The sliding window scans are counted in, in seconds.
    pub window_secs: i64,
    /// Distinct hosts on one port that make a host scan.
    pub scan_hosts: usize,
    /// Distinct ports on one host that make a port scan.
    pub scan_ports: usize,
    /// Refusals within `deny_window_secs` that make a deny storm; 0 turns it off.
    pub deny_storm: usize,
    pub deny_window_secs: i64,
    /// Calls after injected content within which a sensitive attempt is a toxic flow; 0: off.
    pub toxic_calls: u32,
    pub toxic_window_secs: i64,
    /// Most attempts remembered in all.
    pub max_entries: usize,
    /// How long an agent's baseline is learned before a new reach is a detection; 0: off.
    pub learning_secs: i64,
    /// Most reaches one agent's baseline holds (past it, new ones are reported, not kept).
    pub max_baseline: usize,
    /// Most agents with a baseline (the least recently seen is forgotten past it).
    pub max_baselines: usize,
    /// Minutes of call counts an agent's rate baseline keeps; 0 turns rate spikes off.
    pub rate_history_minutes: usize,
    /// Minutes of history needed before a minute can be a spike.
    pub rate_min_history: usize,
    /// A minute is a spike above the larger of this many calls and median + `rate_mads` × MAD.
    pub rate_min_calls: u32,
    pub rate_mads: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            window_secs: 300,
            scan_hosts: 25,
            scan_ports: 15,
            deny_storm: 50,
            deny_window_secs: 60,
            toxic_calls: 5,
            toxic_window_secs: 300,
            max_entries: 1_000_000,
            learning_secs: 86_400,
            max_baseline: 1024,
            max_baselines: 10_000,
            rate_history_minutes: 60,
            rate_min_history: 30,
            rate_min_calls: 30,
            rate_mads: 8,
        }
    }
}

/// One decision, as the detectors read it.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// Seconds since the epoch.
    pub time: i64,
    pub agent: &'a str,
    pub decision_id: &'a str,
    pub allowed: bool,
    /// Where a connection was to go (egress), if it was one.
    pub destination: Option<(&'a str, u16)>,
    /// A review of what came back (a result, a peer's answer), not a call.
    pub review: bool,
    /// Content carrying an injection reached the agent (a review that let it through).
    pub tainted: bool,
    /// A sensitive call: egress, a send-, delete- or execute-class tool, a write to an API.
    pub sensitive: bool,
    /// The grant presented, and the address it came from (when over the network).
    pub grant: &'a str,
    pub source: Option<&'a str>,
    /// The agent across its instances (its SPIFFE ID without instance ids): whose baseline.
    pub baseline: &'a str,
    /// What the call reached, as a baseline keeps it (`mcp.tools/call tool github/list`,
    /// `egress.connect api.example.com:443`, …).
    pub reach: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detector {
    HostScan,
    PortScan,
    DenyStorm,
    ToxicFlow,
    SharedGrant,
    NewReach,
    RateSpike,
}

impl Detector {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HostScan => "scan.hosts",
            Self::PortScan => "scan.ports",
            Self::DenyStorm => "deny-storm",
            Self::ToxicFlow => "toxic-flow",
            Self::SharedGrant => "grant.two-addresses",
            Self::NewReach => "reach.new",
            Self::RateSpike => "rate.spike",
        }
    }
}

/// What a detector saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub detector: Detector,
    pub agent: String,
    pub time: i64,
    pub summary: String,
    /// The decisions that make it, oldest first.
    pub evidence: Vec<String>,
}

/// Attempts at distinct values of one thing (hosts on a port, ports on a host) in the window:
/// each value with the last time it was tried and that attempt's decision.
struct Distinct<T> {
    seen: Vec<(T, i64, String)>,
}

impl<T> Default for Distinct<T> {
    fn default() -> Self {
        Self { seen: Vec::new() }
    }
}

/// What noting an attempt changed: entries added and removed, and the evidence (oldest first)
/// when it completed a scan, whose entries are then cleared.
struct Noted {
    added: usize,
    removed: usize,
    scan: Option<Vec<String>>,
}

impl<T: PartialEq> Distinct<T> {
    fn note(
        &mut self,
        value: T,
        time: i64,
        decision: &str,
        window: i64,
        threshold: usize,
    ) -> Noted {
        let before = self.seen.len();
        self.seen.retain(|(_, at, _)| time - at < window);
        let mut removed = before - self.seen.len();
        let mut added = 0;
        if let Some(entry) = self.seen.iter_mut().find(|(v, _, _)| *v == value) {
            entry.1 = time;
            entry.2 = decision.to_owned();
        } else {
            self.seen.push((value, time, decision.to_owned()));
            added = 1;
        }
        let scan = (self.seen.len() >= threshold).then(|| {
            removed += self.seen.len();
            let mut seen = std::mem::take(&mut self.seen);
            seen.sort_by_key(|(_, at, _)| *at);
            seen.into_iter().map(|(_, _, id)| id).collect()
        });
        Noted {
            added,
            removed,
            scan,
        }
    }
}

#[derive(Default)]
struct AgentState {
    last_seen: i64,
    hosts_on_port: HashMap<u16, Distinct<String>>,
    ports_on_host: HashMap<String, Distinct<u16>>,
    denials: VecDeque<(i64, String)>,
    /// The last injected content the agent received: when, which review, and calls since.
    taint: Option<(i64, String, u32)>,
    /// Per grant, the address it was last presented from: when, and in which decision.
    grant_sources: HashMap<String, (String, i64, String)>,
    entries: usize,
}

/// Grants remembered per agent (its live tasks); the oldest is forgotten past this.
const GRANTS_PER_AGENT: usize = 64;

/// One agent's baseline as it is saved between runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedBaseline {
    pub agent: String,
    /// When learning began (seconds since the epoch).
    pub started: i64,
    pub last_seen: i64,
    pub reaches: Vec<String>,
}

/// What an agent (across its instances) has reached since its baseline began.
struct Baseline {
    started: i64,
    last_seen: i64,
    seen: HashSet<String>,
}

/// An agent's calls per minute (across its instances): this minute's count, and the completed
/// minutes before it, oldest first.
struct Rate {
    minute: i64,
    count: u32,
    history: VecDeque<u32>,
    /// Above this many calls this minute is a spike (worked out once a minute, from the
    /// history; `None` while the history is too short).
    limit: Option<(u32, u32, u32)>,
    reported: Option<i64>,
}

/// The entry for `key`, made with `fresh` when absent — first forgetting the entry least
/// recently used (by `recency`) when the map already holds `bound`.
fn entry_within<'m, V>(
    map: &'m mut HashMap<String, V>,
    key: &str,
    bound: usize,
    recency: impl Fn(&V) -> i64,
    fresh: impl FnOnce() -> V,
) -> Option<&'m mut V> {
    // Looked up by `&str` first: the key is copied only for a new entry.
    if !map.contains_key(key) {
        if map.len() >= bound {
            let oldest = map
                .iter()
                .min_by_key(|(_, value)| recency(value))
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        map.insert(key.to_owned(), fresh());
    }
    map.get_mut(key)
}

/// The median and the median absolute deviation of `counts`.
fn median_and_mad(counts: &VecDeque<u32>) -> (u32, u32) {
    let median = |mut values: Vec<u32>| {
        values.sort_unstable();
        values.get(values.len() / 2).copied().unwrap_or(0)
    };
    let m = median(counts.iter().copied().collect());
    let mad = median(counts.iter().map(|c| c.abs_diff(m)).collect());
    (m, mad)
}

/// Every detector's state, for all agents.
pub struct Detectors {
    settings: Settings,
    agents: HashMap<String, AgentState>,
    entries: usize,
    baselines: HashMap<String, Baseline>,
    rates: HashMap<String, Rate>,
}

impl Detectors {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            agents: HashMap::new(),
            entries: 0,
            baselines: HashMap::new(),
            rates: HashMap::new(),
        }
    }

    /// Attempts remembered now (never above `max_entries`).
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Reads one decision; what it completes.
    pub fn observe(&mut self, observation: &Observation<'_>) -> Vec<Detection> {
        let settings = self.settings.clone();
        let mut found = Vec::new();
        if let Some(detection) = self.new_reach(observation) {
            found.push(detection);
        }
        if let Some(detection) = self.rate_spike(observation) {
            found.push(detection);
        }
        let time = observation.time;
        if !self.agents.contains_key(observation.agent) {
            self.agents
                .insert(observation.agent.to_owned(), AgentState::default());
        }
        let Some(state) = self.agents.get_mut(observation.agent) else {
            return found;
        };
        state.last_seen = time;
        let mut added = 0usize;
        let mut removed = 0usize;
        if let Some((host, port)) = observation.destination {
            let window = settings.window_secs;
            let hosts = state.hosts_on_port.entry(port).or_default();
            let noted = hosts.note(
                host.to_owned(),
                time,
                observation.decision_id,
                window,
                settings.scan_hosts,
            );
            if hosts.seen.is_empty() {
                state.hosts_on_port.remove(&port);
            }
            (added, removed) = (added + noted.added, removed + noted.removed);
            if let Some(evidence) = noted.scan {
                let summary = format!(
                    "{} distinct hosts on port {port} within {window} s",
                    evidence.len()
                );
                found.push(detection(
                    Detector::HostScan,
                    observation,
                    summary,
                    evidence,
                ));
            }
            let ports = state.ports_on_host.entry(host.to_owned()).or_default();
            let noted = ports.note(
                port,
                time,
                observation.decision_id,
                window,
                settings.scan_ports,
            );
            if ports.seen.is_empty() {
                state.ports_on_host.remove(host);
            }
            (added, removed) = (added + noted.added, removed + noted.removed);
            if let Some(evidence) = noted.scan {
                let summary = format!(
                    "{} distinct ports on {host} within {window} s",
                    evidence.len()
                );
                found.push(detection(
                    Detector::PortScan,
                    observation,
                    summary,
                    evidence,
                ));
            }
        }
        if settings.toxic_calls > 0 {
            if observation.tainted {
                if state.taint.is_none() {
                    added += 1;
                }
                state.taint = Some((time, observation.decision_id.to_owned(), 0));
            } else if !observation.review
                && let Some((at, review, calls)) = state.taint.take()
            {
                let calls = calls + 1;
                let fresh = time - at < settings.toxic_window_secs;
                if fresh && observation.sensitive {
                    removed += 1;
                    let summary = format!(
                        "a sensitive call {calls} call(s) after content carrying an injection"
                    );
                    let evidence = vec![review, observation.decision_id.to_owned()];
                    found.push(detection(
                        Detector::ToxicFlow,
                        observation,
                        summary,
                        evidence,
                    ));
                } else if fresh && calls < settings.toxic_calls {
                    state.taint = Some((at, review, calls));
                } else {
                    removed += 1;
                }
            }
        }
        if let (false, Some(source)) = (observation.grant.is_empty(), observation.source) {
            let window = settings.window_secs;
            match state.grant_sources.get_mut(observation.grant) {
                Some((seen, at, decision)) if seen != source && time - *at < window => {
                    let summary = format!(
                        "grant {} presented from {seen} and from {source} within {window} s",
                        observation.grant
                    );
                    let evidence = vec![decision.clone(), observation.decision_id.to_owned()];
                    found.push(detection(
                        Detector::SharedGrant,
                        observation,
                        summary,
                        evidence,
                    ));
                    (*seen, *at, *decision) =
                        (source.to_owned(), time, observation.decision_id.to_owned());
                }
                Some(entry) => {
                    *entry = (source.to_owned(), time, observation.decision_id.to_owned());
                }
                None => {
                    if state.grant_sources.len() >= GRANTS_PER_AGENT {
                        let oldest = state
                            .grant_sources
                            .iter()
                            .min_by_key(|(_, (_, at, _))| *at)
                            .map(|(grant, _)| grant.clone());
                        if let Some(oldest) = oldest {
                            state.grant_sources.remove(&oldest);
                            removed += 1;
                        }
                    }
                    state.grant_sources.insert(
                        observation.grant.to_owned(),
                        (source.to_owned(), time, observation.decision_id.to_owned()),
                    );
                    added += 1;
                }
            }
        }
        if !observation.allowed && !observation.review && settings.deny_storm > 0 {
            while state
                .denials
                .front()
                .is_some_and(|(at, _)| time - at >= settings.deny_window_secs)
            {
                state.denials.pop_front();
                removed += 1;
            }
            state
                .denials
                .push_back((time, observation.decision_id.to_owned()));
            added += 1;
            if state.denials.len() >= settings.deny_storm {
                removed += state.denials.len();
                let evidence: Vec<String> = state.denials.drain(..).map(|(_, id)| id).collect();
                let summary = format!(
                    "{} refused calls within {} s",
                    evidence.len(),
                    settings.deny_window_secs
                );
                found.push(detection(
                    Detector::DenyStorm,
                    observation,
                    summary,
                    evidence,
                ));
            }
        }
        state.entries = (state.entries + added).saturating_sub(removed);
        self.entries = (self.entries + added).saturating_sub(removed);
        let emptied = state.entries == 0;
        if emptied {
            self.agents.remove(observation.agent);
        }
        self.keep_within_bounds(observation.agent);
        found
    }

    /// An allowed call to something the agent's learned baseline does not hold.
    fn new_reach(&mut self, observation: &Observation<'_>) -> Option<Detection> {
        let settings = &self.settings;
        let reach = observation.reach?;
        if settings.learning_secs <= 0 || !observation.allowed || observation.review {
            return None;
        }
        let time = observation.time;
        let baseline = entry_within(
            &mut self.baselines,
            observation.baseline,
            settings.max_baselines,
            |b| b.last_seen,
            || Baseline {
                started: time,
                last_seen: time,
                seen: HashSet::new(),
            },
        )?;
        baseline.last_seen = time;
        if baseline.seen.contains(reach) {
            return None;
        }
        let learned = time - baseline.started >= settings.learning_secs;
        let known = baseline.seen.len();
        if known < settings.max_baseline {
            baseline.seen.insert(reach.to_owned());
        }
        learned.then(|| {
            detection(
                Detector::NewReach,
                observation,
                format!(
                    "first {reach} after a baseline of {known} over {} s",
                    settings.learning_secs
                ),
                vec![observation.decision_id.to_owned()],
            )
        })
    }

    /// A minute in which the agent makes far more calls than its recent minutes (a runaway loop,
    /// a bulk exfiltration): counted per agent across instances, allowed and refused alike.
    fn rate_spike(&mut self, observation: &Observation<'_>) -> Option<Detection> {
        let settings = &self.settings;
        if settings.rate_history_minutes == 0 || observation.review {
            return None;
        }
        let minute = observation.time.div_euclid(60);
        let rate = entry_within(
            &mut self.rates,
            observation.baseline,
            settings.max_baselines,
            |r| r.minute,
            || Rate {
                minute,
                count: 0,
                history: VecDeque::new(),
                limit: None,
                reported: None,
            },
        )?;
        if minute > rate.minute {
            // The minute that ended, then a quiet minute for each one without calls.
            let quiet = usize::try_from(minute - rate.minute - 1).unwrap_or(usize::MAX);
            rate.history.push_back(rate.count);
            for _ in 0..quiet.min(settings.rate_history_minutes) {
                rate.history.push_back(0);
            }
            while rate.history.len() > settings.rate_history_minutes {
                rate.history.pop_front();
            }
            (rate.minute, rate.count) = (minute, 0);
            rate.limit = (rate.history.len() >= settings.rate_min_history).then(|| {
                let (median, mad) = median_and_mad(&rate.history);
                let limit = settings
                    .rate_min_calls
                    .max(median.saturating_add(settings.rate_mads.saturating_mul(mad.max(1))));
                (limit, median, mad)
            });
        }
        rate.count = rate.count.saturating_add(1);
        let (limit, median, mad) = rate.limit?;
        if rate.count <= limit || rate.reported == Some(minute) {
            return None;
        }
        rate.reported = Some(minute);
        Some(detection(
            Detector::RateSpike,
            observation,
            format!(
                "{} calls within a minute; its last {} minutes had a median of {median} (MAD {mad})",
                rate.count,
                rate.history.len()
            ),
            vec![observation.decision_id.to_owned()],
        ))
    }

    /// Agents with a baseline now (never above `max_baselines`).
    pub fn baselines(&self) -> usize {
        self.baselines.len()
    }

    /// Every baseline, to save: a restart must not begin learning afresh (an attacker could
    /// otherwise wait for one to make anything look normal).
    pub fn saved_baselines(&self) -> Vec<SavedBaseline> {
        let mut saved: Vec<SavedBaseline> = self
            .baselines
            .iter()
            .map(|(agent, b)| {
                let mut reaches: Vec<String> = b.seen.iter().cloned().collect();
                reaches.sort_unstable();
                SavedBaseline {
                    agent: agent.clone(),
                    started: b.started,
                    last_seen: b.last_seen,
                    reaches,
                }
            })
            .collect();
        saved.sort_by(|a, b| a.agent.cmp(&b.agent));
        saved
    }

    /// Takes up saved baselines, within this instance's bounds (the most recently seen agents
    /// first, each with at most `max_baseline` reaches).
    pub fn restore_baselines(&mut self, mut saved: Vec<SavedBaseline>) {
        saved.sort_by_key(|b| std::cmp::Reverse(b.last_seen));
        for baseline in saved.into_iter().take(self.settings.max_baselines) {
            self.baselines.insert(
                baseline.agent,
                Baseline {
                    started: baseline.started,
                    last_seen: baseline.last_seen,
                    seen: baseline
                        .reaches
                        .into_iter()
                        .take(self.settings.max_baseline)
                        .collect(),
                },
            );
        }
    }

    /// Forgets the least recently seen agents (never `current`) until the bound holds.
    fn keep_within_bounds(&mut self, current: &str) {
        while self.entries > self.settings.max_entries {
            let oldest = self
                .agents
                .iter()
                .filter(|(agent, _)| agent.as_str() != current)
                .min_by_key(|(_, state)| state.last_seen)
                .map(|(agent, _)| agent.clone());
            let Some(oldest) = oldest else {
                // Only the current agent is left: it alone outgrew the bound.
                if let Some(state) = self.agents.remove(current) {
                    self.entries = self.entries.saturating_sub(state.entries);
                }
                return;
            };
            if let Some(state) = self.agents.remove(&oldest) {
                self.entries = self.entries.saturating_sub(state.entries);
            }
        }
    }
}

fn detection(
    detector: Detector,
    observation: &Observation<'_>,
    summary: String,
    evidence: Vec<String>,
) -> Detection {
    Detection {
        detector,
        agent: observation.agent.to_owned(),
        time: observation.time,
        summary,
        evidence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect<'a>(
        agent: &'a str,
        id: &'a str,
        time: i64,
        host: &'a str,
        port: u16,
    ) -> Observation<'a> {
        Observation {
            time,
            agent,
            decision_id: id,
            allowed: false,
            destination: Some((host, port)),
            review: false,
            tainted: false,
            sensitive: true,
            grant: "",
            source: None,
            baseline: "",
            reach: None,
        }
    }

    fn quiet() -> Settings {
        Settings {
            deny_storm: 0,
            toxic_calls: 0,
            ..Settings::default()
        }
    }

    #[test]
    fn fifteen_ports_on_one_host_are_a_port_scan_with_their_decisions_as_evidence() {
        let mut detectors = Detectors::new(quiet());
        let ids: Vec<String> = (0..15).map(|i| format!("d{i}")).collect();
        for (i, id) in ids.iter().enumerate().take(14) {
            let port = 8000 + u16::try_from(i).unwrap();
            assert!(
                detectors
                    .observe(&connect("a", id, 100, "10.0.0.5", port))
                    .is_empty()
            );
        }
        // The same port again is no new port.
        assert!(
            detectors
                .observe(&connect("a", "again", 101, "10.0.0.5", 8000))
                .is_empty()
        );
        let found = detectors.observe(&connect("a", &ids[14], 102, "10.0.0.5", 9000));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].detector, Detector::PortScan);
        assert_eq!(found[0].evidence.len(), 15);
        assert!(found[0].evidence.contains(&"again".to_owned()));
        assert!(found[0].summary.contains("10.0.0.5"));
    }

    #[test]
    fn twenty_five_hosts_on_one_port_are_a_host_scan_but_not_when_spread_over_time() {
        let mut detectors = Detectors::new(quiet());
        let hosts: Vec<String> = (0..25).map(|i| format!("10.0.1.{i}")).collect();
        // One every 20 s: at most 15 fall in any 5-minute window.
        for (i, host) in hosts.iter().enumerate() {
            let t = 20 * i64::try_from(i).unwrap();
            assert!(
                detectors
                    .observe(&connect("slow", "d", t, host, 22))
                    .is_empty()
            );
        }
        let mut found = Vec::new();
        for host in &hosts {
            found.extend(detectors.observe(&connect("fast", "d", 1_000, host, 22)));
        }
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].detector, Detector::HostScan);
        assert_eq!(found[0].agent, "fast");
    }

    #[test]
    fn a_storm_of_refusals_is_detected_and_allowed_calls_are_not_counted() {
        let mut detectors = Detectors::new(Settings {
            deny_storm: 5,
            ..Settings::default()
        });
        let call = |allowed, time| Observation {
            time,
            agent: "p",
            decision_id: "d",
            allowed,
            destination: None,
            review: false,
            tainted: false,
            sensitive: false,
            grant: "",
            source: None,
            baseline: "",
            reach: None,
        };
        for t in 0..10 {
            assert!(detectors.observe(&call(true, t)).is_empty());
        }
        for t in 0..4 {
            assert!(
                detectors.observe(&call(false, t * 100)).is_empty(),
                "spread out"
            );
        }
        let found: Vec<_> = (0..5)
            .flat_map(|_| detectors.observe(&call(false, 1_000)))
            .collect();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].detector, Detector::DenyStorm);
    }

    /// A flood of distinct hosts from many agents never holds more than the bound.
    #[test]
    fn memory_stays_within_the_bound_under_a_flood() {
        let mut detectors = Detectors::new(Settings {
            max_entries: 1_000,
            scan_hosts: 1_000_000,
            scan_ports: 1_000_000,
            ..Settings::default()
        });
        for i in 0..50_000u32 {
            let agent = format!("agent-{}", i % 97);
            let host = format!("h{i}.example");
            let port = u16::try_from(i % 60_000).unwrap();
            detectors.observe(&connect(&agent, "d", i64::from(i / 100), &host, port));
            assert!(detectors.entries() <= 1_000);
        }
        assert!(detectors.entries() > 0);
    }

    #[test]
    fn a_sensitive_call_soon_after_injected_content_is_a_toxic_flow() {
        let mut detectors = Detectors::new(Settings::default());
        let event = |id: &'static str, time: i64, review: bool, tainted: bool, sensitive: bool| {
            Observation {
                time,
                agent: "a",
                decision_id: id,
                allowed: true,
                destination: None,
                review,
                tainted,
                sensitive,
                grant: "",
                source: None,
                baseline: "",
                reach: None,
            }
        };
        // Sensitive calls with nothing injected before them are work.
        assert!(
            detectors
                .observe(&event("s0", 0, false, false, true))
                .is_empty()
        );
        assert!(
            detectors
                .observe(&event("r1", 10, true, true, false))
                .is_empty()
        );
        assert!(
            detectors
                .observe(&event("c1", 11, false, false, false))
                .is_empty()
        );
        let found = detectors.observe(&event("s1", 12, false, false, true));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].detector, Detector::ToxicFlow);
        assert_eq!(found[0].evidence, vec!["r1".to_owned(), "s1".to_owned()]);
        // Five ordinary calls later the taint has worn off.
        assert!(
            detectors
                .observe(&event("r2", 20, true, true, false))
                .is_empty()
        );
        for i in 0..5 {
            assert!(
                detectors
                    .observe(&event("c", 21 + i, false, false, false))
                    .is_empty()
            );
        }
        assert!(
            detectors
                .observe(&event("s2", 30, false, false, true))
                .is_empty()
        );
        // And so it does after the window.
        assert!(
            detectors
                .observe(&event("r3", 100, true, true, false))
                .is_empty()
        );
        assert!(
            detectors
                .observe(&event("s3", 500, false, false, true))
                .is_empty()
        );
    }

    #[test]
    fn one_grant_from_two_addresses_at_once_is_detected_and_one_address_is_not() {
        let mut detectors = Detectors::new(Settings::default());
        let call =
            |id: &'static str, time: i64, grant: &'static str, source: &'static str| Observation {
                time,
                agent: "a",
                decision_id: id,
                allowed: true,
                destination: None,
                review: false,
                tainted: false,
                sensitive: false,
                grant,
                source: Some(source),
                baseline: "",
                reach: None,
            };
        for t in 0..10 {
            assert!(
                detectors
                    .observe(&call("d", t, "g1", "10.0.0.1"))
                    .is_empty()
            );
        }
        // Another grant from another address is another task.
        assert!(
            detectors
                .observe(&call("d", 11, "g2", "10.0.0.2"))
                .is_empty()
        );
        let found = detectors.observe(&call("stolen", 12, "g1", "203.0.113.9"));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].detector, Detector::SharedGrant);
        assert_eq!(found[0].evidence, vec!["d".to_owned(), "stolen".to_owned()]);
        // Moving after the window is not sharing.
        assert!(
            detectors
                .observe(&call("d", 1_000, "g1", "10.0.0.3"))
                .is_empty()
        );
    }

    #[test]
    fn a_reach_outside_the_learned_baseline_is_detected_once() {
        let mut detectors = Detectors::new(Settings {
            learning_secs: 100,
            max_baseline: 3,
            ..Settings::default()
        });
        let call = |id: &'static str, time: i64, allowed: bool, reach: &'static str| Observation {
            time,
            agent: "spiffe://td/tenant/t/agent/a/i-1",
            decision_id: id,
            allowed,
            destination: None,
            review: false,
            tainted: false,
            sensitive: false,
            grant: "",
            source: None,
            baseline: "spiffe://td/tenant/t/agent/a",
            reach: Some(reach),
        };
        let mut quiet = |observation: Observation<'_>| {
            assert!(
                detectors.observe(&observation).is_empty(),
                "{observation:?}"
            );
        };
        // Learning: nothing is new yet.
        quiet(call("d1", 0, true, "tool s/read"));
        quiet(call("d2", 50, true, "tool s/list"));
        // Learned: what it knows passes, a refused call is not a reach, a new one is found once.
        quiet(call("d3", 150, true, "tool s/read"));
        quiet(call("d4", 151, false, "tool s/delete"));
        let found = detectors.observe(&call("d5", 152, true, "tool s/delete"));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].detector, Detector::NewReach);
        assert_eq!(found[0].evidence, vec!["d5".to_owned()]);
        assert!(
            found[0].summary.contains("tool s/delete"),
            "{}",
            found[0].summary
        );
        assert!(
            detectors
                .observe(&call("d6", 153, true, "tool s/delete"))
                .is_empty()
        );
        // The baseline is full (3): a new reach is still reported, every time, but not kept.
        assert_eq!(
            detectors.observe(&call("d7", 154, true, "tool s/x")).len(),
            1
        );
        assert_eq!(
            detectors.observe(&call("d8", 155, true, "tool s/x")).len(),
            1
        );
    }

    #[test]
    fn saved_baselines_restore_what_was_learned_within_the_bounds() {
        let settings = Settings {
            learning_secs: 10,
            ..Settings::default()
        };
        let mut before = Detectors::new(settings.clone());
        let call = |time: i64, reach: &'static str| Observation {
            time,
            agent: "a/i-1",
            decision_id: "d",
            allowed: true,
            destination: None,
            review: false,
            tainted: false,
            sensitive: false,
            grant: "",
            source: None,
            baseline: "a",
            reach: Some(reach),
        };
        before.observe(&call(0, "tool s/read"));
        let saved = before.saved_baselines();
        assert_eq!(saved[0].reaches, vec!["tool s/read".to_owned()]);
        let mut after = Detectors::new(settings);
        after.restore_baselines(saved);
        // Learning is not restarted: past it, the known reach passes and a new one is found.
        assert!(after.observe(&call(20, "tool s/read")).is_empty());
        assert_eq!(after.observe(&call(21, "tool s/write")).len(), 1);
        let mut small = Detectors::new(Settings {
            max_baselines: 1,
            max_baseline: 1,
            ..Settings::default()
        });
        small.restore_baselines(vec![
            SavedBaseline {
                agent: "old".into(),
                started: 0,
                last_seen: 1,
                reaches: vec!["x".into()],
            },
            SavedBaseline {
                agent: "new".into(),
                started: 0,
                last_seen: 9,
                reaches: vec!["x".into(), "y".into()],
            },
        ]);
        let kept = small.saved_baselines();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].agent, "new");
        assert_eq!(kept[0].reaches.len(), 1);
    }

    #[test]
    fn a_minute_far_above_the_agents_recent_minutes_is_a_spike_reported_once() {
        let mut detectors = Detectors::new(Settings {
            learning_secs: 0,
            rate_history_minutes: 60,
            rate_min_history: 30,
            rate_min_calls: 30,
            rate_mads: 8,
            ..Settings::default()
        });
        let call = |time: i64| Observation {
            time,
            agent: "a/i-1",
            decision_id: "d",
            allowed: true,
            destination: None,
            review: false,
            tainted: false,
            sensitive: false,
            grant: "",
            source: None,
            baseline: "a",
            reach: None,
        };
        let mut spikes = 0;
        // An hour of 5 to 7 calls a minute: never a spike (and none before 30 minutes anyway).
        for minute in 0..60 {
            for i in 0..(5 + minute % 3) {
                spikes += detectors.observe(&call(minute * 60 + i)).len();
            }
        }
        assert_eq!(spikes, 0);
        // Then a runaway minute: found once, at the 31st call (30 is the floor).
        let mut found = Vec::new();
        for i in 0..200 {
            found.extend(detectors.observe(&call(60 * 60 + i % 60)));
        }
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].detector, Detector::RateSpike);
        assert!(
            found[0].summary.starts_with("31 calls within a minute"),
            "{}",
            found[0].summary
        );
        // A quiet agent with a short history is never a spike.
        let mut fresh = Detectors::new(Settings::default());
        let spikes: usize = (0..500).map(|i| fresh.observe(&call(i / 10)).len()).sum();
        assert_eq!(spikes, 0);
    }

    #[test]
    fn baselines_are_bounded_in_number() {
        let mut detectors = Detectors::new(Settings {
            max_baselines: 10,
            ..Settings::default()
        });
        let names: Vec<String> = (0..100).map(|i| format!("agent-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            detectors.observe(&Observation {
                time: i as i64,
                agent: name,
                decision_id: "d",
                allowed: true,
                destination: None,
                review: false,
                tainted: false,
                sensitive: false,
                grant: "",
                source: None,
                baseline: name,
                reach: Some("tool s/read"),
            });
        }
        assert_eq!(detectors.baselines(), 10);
    }
}
