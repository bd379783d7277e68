//! The confinement programs (`bpf/confine.bpf.c`): loaded once per gateway, attached to each
//! agent's cgroup, and the maps through which the gateway learns where a redirected connection
//! was going and which attempts the kernel refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};

use aya::maps::{Array, HashMap, MapData, RingBuf};
use aya::programs::{CgroupSock, CgroupSockAddr, SockOps, TracePoint};
use aya::{Ebpf, EbpfLoader, include_bytes_aligned};

use crate::{Cgroup, SandboxError};

static OBJECT: &[u8] = include_bytes_aligned!("../bpf/confine.bpf.o");

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// The programs, each with the cgroup hook it serves (`enum bpf_attach_type` in the kernel's
/// `linux/bpf.h`).
const PROGRAMS: [(&str, u32); 10] = [
    ("warden_sock_create", 2),   // BPF_CGROUP_INET_SOCK_CREATE
    ("warden_sockops", 3),       // BPF_CGROUP_SOCK_OPS
    ("warden_connect4", 10),     // BPF_CGROUP_INET4_CONNECT
    ("warden_connect6", 11),     // BPF_CGROUP_INET6_CONNECT
    ("warden_sendmsg4", 14),     // BPF_CGROUP_UDP4_SENDMSG
    ("warden_sendmsg6", 15),     // BPF_CGROUP_UDP6_SENDMSG
    ("warden_recvmsg4", 19),     // BPF_CGROUP_UDP4_RECVMSG
    ("warden_recvmsg6", 20),     // BPF_CGROUP_UDP6_RECVMSG
    ("warden_getpeername4", 29), // BPF_CGROUP_INET4_GETPEERNAME
    ("warden_getpeername6", 30), // BPF_CGROUP_INET6_GETPEERNAME
];

// The maps' layouts, as `confine.bpf.c` declares them.

#[repr(C)]
#[derive(Clone, Copy)]
struct Settings {
    listener4: u32,
    listener6: [u32; 4],
    listener_port: u16,
    pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawOrigin {
    cgroup: u64,
    pid: u32,
    family: u16,
    port: u16,
    addr: [u32; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RawPeer {
    addr: [u32; 4],
    family: u32,
    port: u32,
}

/// `struct refusal`: cgroup (u64); pid, kind, family, type, protocol (u32); port (u16, network
/// order), padding (u16); the address (4 × u32).
const REFUSAL_LEN: usize = 48;

// SAFETY: plain `repr(C)` structs of integers with no padding the kernel could leave
// uninitialised (each is laid out to whole words), valid for any bit pattern.
#[allow(unsafe_code)]
unsafe impl aya::Pod for Settings {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for RawOrigin {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for RawPeer {}

/// Where the programs send what they let through.
#[derive(Debug, Clone, Copy)]
pub struct Redirect {
    /// The transparent listener on IPv4 loopback.
    pub listener4: SocketAddrV4,
    /// The same port on IPv6 loopback, when the gateway listens there too.
    pub listener6: Option<Ipv6Addr>,
}

/// Where a redirected connection was going, and who opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub destination: SocketAddr,
    pub cgroup: u64,
    pub pid: u32,
}

/// An attempt the kernel refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub cgroup: u64,
    pub pid: u32,
    pub refused: Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// UDP other than DNS.
    Udp { destination: SocketAddr },
    /// A socket other than TCP or UDP (raw, ICMP, SCTP…): its family, type and protocol.
    Socket {
        family: u32,
        kind: u32,
        protocol: u32,
    },
}

/// The one program not attached to a cgroup: it sees `socket(2)` calls system-wide and reports
/// those of agent cgroups, including the ones the kernel refuses before any cgroup hook runs.
const SOCKET_ATTEMPTS: &str = "warden_socket_attempts";

/// Where the kernel's trace events are; mounted if missing, so socket attempts can be watched.
const TRACEFS: &str = "/sys/kernel/tracing";

/// The loaded programs and their maps.
pub struct Confinement {
    ebpf: Ebpf,
    peers: HashMap<MapData, RawPeer, RawOrigin>,
    confined: HashMap<MapData, u64, u32>,
    refusals: Option<RingBuf<MapData>>,
}

impl Confinement {
    /// Loads the programs, pointed at the gateway's listeners. Needs root (or CAP_BPF and
    /// CAP_NET_ADMIN).
    pub fn load(redirect: &Redirect) -> Result<Self, SandboxError> {
        if !cfg!(target_os = "linux") {
            return Err(SandboxError::NotLinux);
        }
        let load = |e: &dyn std::fmt::Display| SandboxError::Load(e.to_string());
        let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(|e| load(&e))?;
        {
            let map = ebpf
                .map_mut("settings")
                .ok_or_else(|| load(&"the object has no settings map"))?;
            let mut settings: Array<_, Settings> = Array::try_from(map).map_err(|e| load(&e))?;
            let ip6 = redirect.listener6.unwrap_or(Ipv6Addr::UNSPECIFIED);
            let value = Settings {
                listener4: u32::from_ne_bytes(redirect.listener4.ip().octets()),
                listener6: words(ip6.octets()),
                listener_port: redirect.listener4.port().to_be(),
                pad: 0,
            };
            settings.set(0, value, 0).map_err(|e| load(&e))?;
        }
        for (name, _) in PROGRAMS {
            let program = ebpf
                .program_mut(name)
                .ok_or_else(|| load(&format!("the object has no program {name}")))?;
            let loaded = match program {
                aya::programs::Program::CgroupSockAddr(p) => CgroupSockAddr::load(p),
                aya::programs::Program::CgroupSock(p) => CgroupSock::load(p),
                aya::programs::Program::SockOps(p) => SockOps::load(p),
                _ => return Err(load(&format!("{name} is of an unexpected program type"))),
            };
            loaded.map_err(|e| load(&format!("{name}: {}", verifier_message(&e))))?;
        }
        watch_socket_attempts(&mut ebpf)?;
        let confined = ebpf
            .take_map("confined")
            .ok_or_else(|| load(&"the object has no confined map"))?;
        let confined = HashMap::try_from(confined).map_err(|e| load(&e))?;
        let peers = ebpf
            .take_map("peers")
            .ok_or_else(|| load(&"the object has no peers map"))?;
        let peers = HashMap::try_from(peers).map_err(|e| load(&e))?;
        let refusals = ebpf
            .take_map("refusals")
            .ok_or_else(|| load(&"the object has no refusals map"))?;
        let refusals = RingBuf::try_from(refusals).map_err(|e| load(&e))?;
        Ok(Self {
            ebpf,
            peers,
            confined,
            refusals: Some(refusals),
        })
    }

    /// Attaches every program to the agent's cgroup, its DNS going to `dns_port` on the
    /// listener's loopback addresses (`None`: all UDP refused). The attachment is the cgroup's,
    /// not this process's: if the gateway dies, the agent's connections still go to its (dead)
    /// listener and fail, rather than going out unchecked. It ends when the cgroup is removed.
    pub fn attach(&mut self, cgroup: &Cgroup, dns_port: Option<u16>) -> Result<(), SandboxError> {
        self.confined
            .insert(cgroup.id(), u32::from(dns_port.unwrap_or(0).to_be()), 0)
            .map_err(|e| SandboxError::Load(format!("cannot note the cgroup: {e}")))?;
        let directory = std::fs::File::open(cgroup.path())
            .map_err(|e| SandboxError::io(format!("cannot open {}", cgroup.path().display()), e))?;
        for (name, attach_type) in PROGRAMS {
            let program = self
                .ebpf
                .program(name)
                .ok_or_else(|| SandboxError::Load(format!("no program {name}")))?;
            let fd = program
                .fd()
                .map_err(|e| SandboxError::Load(format!("{name}: {e}")))?;
            prog_attach(directory.as_fd(), fd.as_fd(), attach_type).map_err(|source| {
                SandboxError::Attach {
                    program: name,
                    cgroup: cgroup.path().display().to_string(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Stops reporting a cgroup's socket attempts (it is gone, or no longer an agent's).
    pub fn forget(&mut self, cgroup: u64) {
        let _ = self.confined.remove(&cgroup);
    }

    /// Where the connection whose agent end is `peer` (the gateway's view of its peer) was
    /// going. Each answer is given once.
    pub fn origin(&mut self, peer: SocketAddr) -> Option<Origin> {
        let (family, addr) = match peer.ip() {
            IpAddr::V4(ip) => (AF_INET, [u32::from_ne_bytes(ip.octets()), 0, 0, 0]),
            IpAddr::V6(ip) => (AF_INET6, words(ip.octets())),
        };
        let key = RawPeer {
            addr,
            family,
            port: u32::from(peer.port()),
        };
        let raw = self.peers.get(&key, 0).ok()?;
        let _ = self.peers.remove(&key);
        Some(Origin {
            destination: SocketAddr::new(
                ip_of(u32::from(raw.family), raw.addr)?,
                u16::from_be(raw.port),
            ),
            cgroup: raw.cgroup,
            pid: raw.pid,
        })
    }

    /// The kernel's report of refused attempts, to be read by one task.
    pub fn take_refusals(&mut self) -> Option<Refusals> {
        self.refusals.take().map(|ring| Refusals { ring })
    }
}

/// Refused attempts as the kernel reports them: [`Refusals::wait`] for some, then drain them
/// with [`Refusals::next`].
pub struct Refusals {
    ring: RingBuf<MapData>,
}

impl Refusals {
    /// Blocks until the kernel has reported something or `timeout` passes; says which.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        let mut poll = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one live `pollfd` for a descriptor this struct owns, with its count.
        #[allow(unsafe_code)]
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        ready > 0
    }

    #[allow(clippy::should_implement_trait)] // it borrows the ring, so it is not an Iterator
    pub fn next(&mut self) -> Option<Refusal> {
        loop {
            let item = self.ring.next()?;
            if let Some(refusal) = decode_refusal(&item) {
                return Some(refusal);
            }
        }
    }
}

fn decode_refusal(bytes: &[u8]) -> Option<Refusal> {
    if bytes.len() < REFUSAL_LEN {
        return None;
    }
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let cgroup = u64::from_ne_bytes(bytes.get(0..8)?.try_into().ok()?);
    let (pid, kind, family, kind_of_socket, protocol) = (
        u32_at(8)?,
        u32_at(12)?,
        u32_at(16)?,
        u32_at(20)?,
        u32_at(24)?,
    );
    let port = u16::from_be_bytes(bytes.get(28..30)?.try_into().ok()?);
    let addr = [u32_at(32)?, u32_at(36)?, u32_at(40)?, u32_at(44)?];
    let refused = match kind {
        1 => Refused::Udp {
            destination: SocketAddr::new(ip_of(family, addr)?, port),
        },
        2 => Refused::Socket {
            family,
            kind: kind_of_socket,
            protocol,
        },
        _ => return None,
    };
    Some(Refusal {
        cgroup,
        pid,
        refused,
    })
}

/// An address as the programs store it (network order words), canonical: an IPv4-mapped IPv6
/// address is the IPv4 address it reaches.
fn ip_of(family: u32, addr: [u32; 4]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::from(addr[0].to_ne_bytes()))),
        AF_INET6 => {
            let mut octets = [0u8; 16];
            for (chunk, word) in octets.chunks_exact_mut(4).zip(addr) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(octets)).to_canonical())
        }
        _ => None,
    }
}

fn words(octets: [u8; 16]) -> [u32; 4] {
    let mut words = [0u32; 4];
    for (word, chunk) in words.iter_mut().zip(octets.chunks_exact(4)) {
        *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    words
}

fn watch_socket_attempts(ebpf: &mut Ebpf) -> Result<(), SandboxError> {
    let load = |e: &dyn std::fmt::Display| SandboxError::Load(format!("{SOCKET_ATTEMPTS}: {e}"));
    if !std::path::Path::new(TRACEFS).join("events").is_dir() {
        mount_tracefs().map_err(|e| {
            SandboxError::io(
                format!("cannot mount tracefs at {TRACEFS} (socket attempts are watched there)"),
                e,
            )
        })?;
    }
    let program: &mut TracePoint = ebpf
        .program_mut(SOCKET_ATTEMPTS)
        .ok_or_else(|| load(&"missing from the object"))?
        .try_into()
        .map_err(|e| load(&e))?;
    program.load().map_err(|e| load(&verifier_message(&e)))?;
    program
        .attach("syscalls", "sys_enter_socket")
        .map_err(|e| load(&e))?;
    Ok(())
}

fn mount_tracefs() -> std::io::Result<()> {
    let (source, target, fstype) = (c"nodev", c"/sys/kernel/tracing", c"tracefs");
    // SAFETY: mount(2) with NUL-terminated static strings and no data.
    #[allow(unsafe_code)]
    let result = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn verifier_message(error: &aya::programs::ProgramError) -> String {
    match error {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            format!("{io_error}; verifier: {verifier_log}")
        }
        other => other.to_string(),
    }
}

/// `bpf(BPF_PROG_ATTACH)`: attaches a program to a cgroup in the kernel's own keeping (unlike a
/// BPF link, which ends with the process holding it).
fn prog_attach(
    cgroup: BorrowedFd<'_>,
    program: BorrowedFd<'_>,
    attach_type: u32,
) -> std::io::Result<()> {
    /// The `BPF_PROG_ATTACH` part of `union bpf_attr`, zero-padded to the size the kernel
    /// accepts for it.
    #[repr(C)]
    struct Attach {
        target_fd: u32,
        attach_bpf_fd: u32,
        attach_type: u32,
        attach_flags: u32,
        replace_bpf_fd: u32,
        padding: [u32; 3],
    }
    const BPF_PROG_ATTACH: libc::c_long = 8;
    let as_u32 = |fd: BorrowedFd<'_>| u32::try_from(fd.as_raw_fd()).map_err(std::io::Error::other);
    let attr = Attach {
        target_fd: as_u32(cgroup)?,
        attach_bpf_fd: as_u32(program)?,
        attach_type,
        // No flags: one program per hook, and nothing below may override it.
        attach_flags: 0,
        replace_bpf_fd: 0,
        padding: [0; 3],
    };
    // SAFETY: `attr` is a fully initialised `bpf_attr` prefix that outlives the call, and its
    // size is passed with it; both descriptors are open for the duration (borrowed).
    #[allow(unsafe_code)]
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const Attach,
            std::mem::size_of::<Attach>() as libc::c_uint,
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_the_maps_layout() {
        let v6: Ipv6Addr = "2001:db8::1".parse().expect("address");
        assert_eq!(ip_of(AF_INET6, words(v6.octets())), Some(IpAddr::V6(v6)));
        let mapped: Ipv6Addr = "::ffff:10.1.2.3".parse().expect("address");
        assert_eq!(
            ip_of(AF_INET6, words(mapped.octets())),
            Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)))
        );
        let v4 = Ipv4Addr::new(192, 0, 2, 7);
        assert_eq!(
            ip_of(AF_INET, [u32::from_ne_bytes(v4.octets()), 0, 0, 0]),
            Some(IpAddr::V4(v4))
        );
        assert_eq!(ip_of(99, [0; 4]), None);
    }

    #[test]
    fn refusals_decode_and_short_records_are_dropped() {
        let mut record = vec![0u8; REFUSAL_LEN];
        record[0..8].copy_from_slice(&7u64.to_ne_bytes());
        record[8..12].copy_from_slice(&42u32.to_ne_bytes());
        record[12..16].copy_from_slice(&1u32.to_ne_bytes());
        record[16..20].copy_from_slice(&AF_INET.to_ne_bytes());
        record[28..30].copy_from_slice(&53u16.to_be_bytes());
        record[32..36].copy_from_slice(&[8, 8, 8, 8]);
        assert_eq!(
            decode_refusal(&record),
            Some(Refusal {
                cgroup: 7,
                pid: 42,
                refused: Refused::Udp {
                    destination: "8.8.8.8:53".parse().expect("address")
                }
            })
        );
        assert_eq!(decode_refusal(&record[..20]), None);
    }
}
