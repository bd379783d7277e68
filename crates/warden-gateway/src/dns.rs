//! The DNS responder of one confined agent instance: the kernel sends the instance's lookups
//! (UDP to port 53, wherever addressed) here. It answers A and AAAA only for names a permitting
//! egress rule of the agent names — so lookups cannot carry data out to a name server an
//! attacker runs — resolving them with the gateway's resolver, and remembers what it answered:
//! a TLS connection is let through only on a name resolved to the address it goes to.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;
use warden_model::Host;

use crate::plumbing::State;
use crate::sandbox::Sandbox;

/// How long an answer lasts, at the agent and in the memory of what was answered.
const TTL: Duration = Duration::from_secs(60);

/// The most names one instance's memory holds; the oldest go first.
const MAX_REMEMBERED: usize = 4096;

/// What an instance was told each name resolves to, and until when.
#[derive(Default)]
pub(crate) struct Answered {
    names: Mutex<HashMap<String, (Vec<IpAddr>, Instant)>>,
}

impl Answered {
    fn remember(&self, name: &str, addresses: &[IpAddr]) {
        let mut names = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if names.len() >= MAX_REMEMBERED {
            names.retain(|_, (_, until)| *until > now);
            if names.len() >= MAX_REMEMBERED
                && let Some(oldest) = names
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(name, _)| name.clone())
            {
                names.remove(&oldest);
            }
        }
        let entry = names
            .entry(name.to_owned())
            .or_insert_with(|| (Vec::new(), now));
        if entry.1 <= now {
            entry.0.clear();
        }
        for address in addresses {
            if !entry.0.contains(address) {
                entry.0.push(*address);
            }
        }
        entry.1 = now + TTL;
    }

    /// Whether the instance was told `name` resolves to `ip` (and the answer still holds).
    pub(crate) fn resolved(&self, name: &str, ip: IpAddr) -> bool {
        let names = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        names
            .get(&name.to_ascii_lowercase())
            .is_some_and(|(addresses, until)| *until > Instant::now() && addresses.contains(&ip))
    }
}

/// Answers the instance's lookups until the task is aborted.
pub(crate) async fn serve(
    state: Arc<State>,
    sandbox: Arc<Sandbox>,
    cgroup: u64,
    socket: UdpSocket,
    answered: Arc<Answered>,
) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let Some(reply) = answer(&state, &sandbox, cgroup, &buffer[..n], &answered).await else {
            continue;
        };
        let _ = socket.send_to(&reply, from).await;
    }
}

async fn answer(
    state: &State,
    sandbox: &Sandbox,
    cgroup: u64,
    datagram: &[u8],
    answered: &Answered,
) -> Option<Vec<u8>> {
    // What does not parse as a query gets no answer: nothing to say it to.
    let query = Message::from_vec(datagram).ok()?;
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let id = query.metadata.id;
    let refuse = |code| {
        Message::error_msg(id, query.metadata.op_code, code)
            .to_vec()
            .ok()
    };
    if query.metadata.op_code != OpCode::Query || query.queries.len() != 1 {
        return refuse(ResponseCode::NotImp);
    }
    let question = &query.queries[0];
    let name = question.name().to_ascii();
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let Ok(host @ Host::Dns(_)) = Host::new(&name) else {
        return refuse(ResponseCode::Refused);
    };
    let caller = sandbox.caller(state, cgroup, None)?;
    let reachable =
        state.pipeline.stopped(&caller).is_none() && state.pipeline.could_reach(&caller, &host);
    if !reachable {
        state.pipeline.record_refused_lookup(&caller, &name);
        return refuse(ResponseCode::Refused);
    }
    let mut reply = Message::response(id, OpCode::Query);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.queries.push(question.clone());
    reply.edns = query.edns.clone();
    let wanted = question.query_type();
    if matches!(wanted, RecordType::A | RecordType::AAAA) {
        let Ok(addresses) = crate::egress::addresses(&host, 0).await else {
            reply.metadata.response_code = ResponseCode::NXDomain;
            return reply.to_vec().ok();
        };
        let addresses: Vec<IpAddr> = addresses
            .into_iter()
            .map(|a| a.to_canonical())
            .filter(|a| a.is_ipv4() == (wanted == RecordType::A))
            .collect();
        answered.remember(&name, &addresses);
        let ttl = u32::try_from(TTL.as_secs()).unwrap_or(60);
        for address in addresses {
            let data = match address {
                IpAddr::V4(v4) => RData::A(A(v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
            };
            reply
                .answers
                .push(Record::from_rdata(question.name().clone(), ttl, data));
        }
    }
    // Other types (HTTPS, TXT, MX…) of a reachable name: an empty answer, which resolvers take
    // as "none"; the gateway resolves only addresses.
    reply.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_remembered_until_they_expire_and_names_are_bounded() {
        let answered = Answered::default();
        let ip: IpAddr = "192.0.2.1".parse().expect("address");
        answered.remember("api.example.com", &[ip]);
        assert!(answered.resolved("API.example.com", ip));
        assert!(!answered.resolved("api.example.com", "192.0.2.2".parse().expect("address")));
        assert!(!answered.resolved("other.example.com", ip));
        for n in 0..MAX_REMEMBERED + 10 {
            answered.remember(&format!("n{n}.example.com"), &[ip]);
        }
        let held = answered
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len();
        assert!(held <= MAX_REMEMBERED, "{held}");
    }
}
