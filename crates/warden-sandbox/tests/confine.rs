//! The programs in a real kernel: a real cgroup, real sockets, a real unprivileged child. Needs
//! root and cgroup v2 with BPF; without them these tests fail saying what is missing.

use std::io::Read as _;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use warden_sandbox::{Cgroup, Confinement, Metering, Redirect, Refused, User, spawn};

struct Sandbox {
    confinement: Confinement,
    listener: TcpListener,
    listener6: Option<TcpListener>,
    cgroup: Option<Cgroup>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            let _ = cgroup.remove();
        }
    }
}

fn sandbox(name: &str) -> Sandbox {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("address").port();
    let listener6 = TcpListener::bind((Ipv6Addr::LOCALHOST, port)).ok();
    let redirect = Redirect {
        listener4: SocketAddrV4::new([127, 0, 0, 1].into(), port),
        listener6: listener6.as_ref().map(|_| Ipv6Addr::LOCALHOST),
    };
    let confinement = Confinement::load(&redirect)
        .unwrap_or_else(|e| panic!("these tests need root and a kernel with cgroup v2 BPF: {e}"));
    let name = format!("test-{name}-{}", std::process::id());
    let cgroup = Cgroup::create(&name).unwrap_or_else(|e| panic!("cannot create a cgroup: {e}"));
    let mut confinement = confinement;
    confinement.attach(&cgroup, None).expect("attach");
    Sandbox {
        confinement,
        listener,
        listener6,
        cgroup: Some(cgroup),
    }
}

fn nobody() -> User {
    User::lookup("nobody").expect("the nobody user")
}

fn python(sandbox: &Sandbox, code: &str) -> std::process::Child {
    let mut command = Command::new("python3");
    command
        .args(["-c", code])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    spawn(command, sandbox.cgroup.as_ref().expect("cgroup"), &nobody()).expect("spawn")
}

fn output(child: std::process::Child) -> String {
    let out = child.wait_with_output().expect("wait");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Accepts one redirected connection and returns where it was going.
fn accept(sandbox: &mut Sandbox, listener6: bool) -> warden_sandbox::Origin {
    let listener = if listener6 {
        sandbox.listener6.as_ref().expect("IPv6 loopback")
    } else {
        &sandbox.listener
    };
    let (mut stream, peer) = listener.accept().expect("accept");
    let origin = sandbox
        .confinement
        .origin(peer)
        .expect("the origin of the connection");
    let mut first = [0u8; 5];
    stream.read_exact(&mut first).expect("read");
    assert_eq!(&first, b"hello");
    origin
}

#[test]
fn tcp_connects_by_address_reach_the_gateway_with_their_origin() {
    let mut sandbox = sandbox("tcp");
    let cgroup = sandbox.cgroup.as_ref().expect("cgroup").id();
    let metering = Metering::start().expect("BPF run statistics");
    let connects = |metering: &Metering| {
        metering
            .read()
            .expect("the programs' statistics")
            .into_iter()
            .find(|cost| cost.name == "warden_connect4")
            .expect("warden_connect4 is loaded")
    };
    let before = connects(&metering);
    let child = python(
        &sandbox,
        "import socket\ns=socket.create_connection(('203.0.113.9', 8443), timeout=5)\ns.sendall(b'hello')\nprint(s.getpeername())",
    );
    let origin = accept(&mut sandbox, false);
    assert_eq!(
        origin.destination,
        "203.0.113.9:8443".parse::<SocketAddr>().expect("address")
    );
    assert_eq!(origin.cgroup, cgroup);
    assert_eq!(origin.pid, child.id());
    // The agent sees the address it asked for.
    assert!(output(child).contains("203.0.113.9"));
    // TCP Fast Open's sendto(MSG_FASTOPEN) connects too, through the same hook.
    let child = python(
        &sandbox,
        "import socket\ns=socket.socket()\ns.sendto(b'hello', socket.MSG_FASTOPEN, ('192.0.2.77', 8080))\ns.recv(1)",
    );
    let origin = accept(&mut sandbox, false);
    assert_eq!(
        origin.destination,
        "192.0.2.77:8080".parse::<SocketAddr>().expect("address")
    );
    let _ = output(child);
    // A forked child is confined the same.
    let child = python(
        &sandbox,
        "import os,socket\nif os.fork()==0:\n  s=socket.create_connection(('198.51.100.1', 80), timeout=5); s.sendall(b'hello'); os._exit(0)\nos.wait()",
    );
    let origin = accept(&mut sandbox, false);
    assert_eq!(
        origin.destination,
        "198.51.100.1:80".parse::<SocketAddr>().expect("address")
    );
    assert_ne!(origin.pid, child.id());
    let _ = output(child);
    // The kernel timed each of those connects' program (other tests' connects may add more).
    let after = connects(&metering);
    assert!(after.runs >= before.runs + 3, "{before:?} {after:?}");
    assert!(after.time > before.time, "{before:?} {after:?}");
}

#[test]
fn ipv6_and_loopback_connects_are_redirected_too() {
    let mut sandbox = sandbox("tcp6");
    if sandbox.listener6.is_none() {
        panic!("this test needs IPv6 loopback (::1)");
    }
    let child = python(
        &sandbox,
        "import socket\ns=socket.create_connection(('2001:db8::7', 443), timeout=5)\ns.sendall(b'hello')",
    );
    let origin = accept(&mut sandbox, true);
    assert_eq!(
        origin.destination,
        "[2001:db8::7]:443".parse::<SocketAddr>().expect("address")
    );
    let _ = output(child);
    let child = python(
        &sandbox,
        "import socket\ns=socket.create_connection(('127.0.0.1', 22), timeout=5)\ns.sendall(b'hello')",
    );
    let origin = accept(&mut sandbox, false);
    assert_eq!(
        origin.destination,
        "127.0.0.1:22".parse::<SocketAddr>().expect("address")
    );
    let _ = output(child);
}

#[test]
fn udp_and_raw_sockets_are_refused_and_reported() {
    let mut sandbox = sandbox("udp");
    let mut refusals = sandbox.confinement.take_refusals().expect("refusals");
    let said = output(python(
        &sandbox,
        "import socket\ntry:\n  socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('8.8.8.8', 53)); print('sent')\nexcept OSError as e: print('udp refused', e.errno)\ntry:\n  socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print('raw')\nexcept OSError as e: print('raw refused', e.errno)\ntry:\n  socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); print('ping')\nexcept OSError as e: print('ping refused', e.errno)",
    ));
    assert!(said.contains("udp refused 1"), "{said}");
    assert!(said.contains("raw refused"), "{said}");
    assert!(said.contains("ping refused 1"), "{said}");
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut seen = Vec::new();
    while seen.len() < 3 && Instant::now() < deadline {
        match refusals.next() {
            Some(refusal) => seen.push(refusal.refused),
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    assert!(
        seen.contains(&Refused::Udp {
            destination: "8.8.8.8:53".parse().expect("address")
        }),
        "{seen:?}"
    );
    // The raw socket is refused for want of CAP_NET_RAW before any cgroup hook; it is
    // reported all the same.
    assert!(
        seen.iter().any(|r| matches!(
            r,
            Refused::Socket {
                kind: 3,
                protocol: 1,
                ..
            }
        )),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|r| matches!(
            r,
            Refused::Socket {
                kind: 2,
                protocol: 1,
                ..
            }
        )),
        "{seen:?}"
    );
}

#[test]
fn without_an_ipv6_listener_ipv6_is_refused_not_sent_to_the_wildcard() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("address").port();
    // Something of this host's listening on the IPv6 wildcard at the same port.
    let wildcard = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).ok();
    let mut confinement = Confinement::load(&Redirect {
        listener4: SocketAddrV4::new([127, 0, 0, 1].into(), port),
        listener6: None,
    })
    .unwrap_or_else(|e| panic!("these tests need root and a kernel with cgroup v2 BPF: {e}"));
    let cgroup = Cgroup::create(&format!("test-nov6-{}", std::process::id())).expect("cgroup");
    confinement.attach(&cgroup, None).expect("attach");
    let sandbox = Sandbox {
        confinement,
        listener,
        listener6: None,
        cgroup: Some(cgroup),
    };
    let said = output(python(
        &sandbox,
        "import socket\ntry:\n  socket.create_connection(('2001:db8::1', 443), timeout=3); print('connected')\nexcept OSError as e: print('refused', e.errno)",
    ));
    assert!(said.contains("refused 1"), "{said}");
    drop(wildcard);
}

#[test]
fn dns_goes_to_the_instances_responder_and_answers_come_from_the_server_asked() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("address").port();
    let mut confinement = Confinement::load(&Redirect {
        listener4: SocketAddrV4::new([127, 0, 0, 1].into(), port),
        listener6: None,
    })
    .unwrap_or_else(|e| panic!("these tests need root and a kernel with cgroup v2 BPF: {e}"));
    let responder = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let dns_port = responder.local_addr().expect("address").port();
    let cgroup = Cgroup::create(&format!("test-dns-{}", std::process::id())).expect("cgroup");
    confinement.attach(&cgroup, Some(dns_port)).expect("attach");
    let sandbox = Sandbox {
        confinement,
        listener,
        listener6: None,
        cgroup: Some(cgroup),
    };
    let child = python(
        &sandbox,
        "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(5)\ns.sendto(b'query', ('192.0.2.53', 53))\nprint(s.recvfrom(100))\nc=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nc.settimeout(5)\nc.connect(('192.0.2.54', 53)); c.send(b'again'); print(c.recv(100), c.getpeername())",
    );
    responder
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buffer = [0u8; 100];
    for expected in [&b"query"[..], &b"again"[..]] {
        let (n, from) = responder.recv_from(&mut buffer).expect("a datagram");
        assert_eq!(&buffer[..n], expected);
        responder.send_to(b"answer", from).expect("reply");
    }
    let said = output(child);
    assert!(said.contains("(b'answer', ('192.0.2.53', 53))"), "{said}");
    assert!(said.contains("b'answer' ('192.0.2.54', 53)"), "{said}");
}

#[test]
fn the_agent_cannot_move_itself_out_of_its_cgroup() {
    let sandbox = sandbox("escape");
    let cgroup = sandbox.cgroup.as_ref().expect("cgroup");
    let root = Cgroup::hierarchy().expect("hierarchy");
    let said = output(python(
        &sandbox,
        &format!(
            "import os\nfor p in ['{}/cgroup.procs', '{}/cgroup.procs']:\n  try:\n    open(p,'w').write(str(os.getpid())); print('moved', p)\n  except OSError as e: print('refused', e.errno)\nprint(os.getuid(), open('/proc/self/status').read().split('NoNewPrivs:')[1].split()[0])",
            root.display(),
            root.join("warden").display()
        ),
    ));
    assert!(!said.contains("moved"), "{said}");
    let nobody = nobody();
    assert!(said.contains(&format!("{} 1", nobody.uid)), "{said}");
    let _ = cgroup;
}
