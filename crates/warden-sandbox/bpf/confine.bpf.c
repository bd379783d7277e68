// SPDX-License-Identifier: MIT OR GPL-2.0
//
// Confinement for `warden run`, attached to the agent's cgroup (v2). Every TCP connect goes to
// the gateway's transparent listener, which reads the original destination back from `peers`;
// UDP goes out only to port 53, and then to the gateway's DNS responder for that agent instance;
// sockets other than TCP and UDP are refused. Refusals are reported on `refusals` so the gateway can record them with
// the process that tried.
//
// Rebuild with ./build.sh (CI rebuilds and compares with the committed object).

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2

// Written by the gateway before any program is attached. Addresses and ports in network order.
struct settings {
	__u32 listener4;
	__u32 listener6[4];
	__u16 listener_port;
	__u16 pad;
};

// Where a socket asked to go, and who asked.
struct origin {
	__u64 cgroup;
	__u32 pid;
	__u16 family;
	__u16 port; // network order
	__u32 addr[4]; // network order; IPv4 in addr[0]
};

// A redirected connection as the gateway sees its peer: the agent's local address and port.
struct peer {
	__u32 addr[4]; // network order
	__u32 family;
	__u32 port; // host order
};

enum refusal_kind {
	REFUSED_UDP = 1,
	REFUSED_SOCKET = 2,
};

struct refusal {
	__u64 cgroup;
	__u32 pid;
	__u32 kind;
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u16 port; // network order
	__u16 pad;
	__u32 addr[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
} settings SEC(".maps");

// Socket cookie -> origin: filled at connect, read when the connection is established (and by
// getpeername, so the agent sees the address it asked for).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct origin);
} origins SEC(".maps");

// The agent's end of an established redirected connection -> origin: what the gateway reads.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct peer);
	__type(value, struct origin);
} peers SEC(".maps");

// The agent cgroups, each with its instance's DNS responder port (network order; 0: none, all UDP
// refused). Also what the one program not attached to a cgroup (`socket_attempts`) filters by.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} confined SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} refusals SEC(".maps");

static __always_inline struct settings *configured(void)
{
	__u32 zero = 0;
	struct settings *s = bpf_map_lookup_elem(&settings, &zero);
	if (!s || !s->listener_port)
		return 0;
	return s;
}

// Whether the gateway listens on IPv6 loopback; if not, IPv6 is refused rather than sent to
// the unspecified address (which would reach whatever listens on this host's wildcard).
static __always_inline int has_listener6(struct settings *s)
{
	return s->listener6[0] | s->listener6[1] | s->listener6[2] | s->listener6[3];
}

static __always_inline void refuse(__u32 kind, __u32 family, __u32 type, __u32 protocol,
				   __u16 port, const __u32 *addr)
{
	struct refusal *r = bpf_ringbuf_reserve(&refusals, sizeof(*r), 0);
	if (!r)
		return;
	r->cgroup = bpf_get_current_cgroup_id();
	r->pid = bpf_get_current_pid_tgid() >> 32;
	r->kind = kind;
	r->family = family;
	r->type = type;
	r->protocol = protocol;
	r->port = port;
	r->pad = 0;
	r->addr[0] = addr ? addr[0] : 0;
	r->addr[1] = addr ? addr[1] : 0;
	r->addr[2] = addr ? addr[2] : 0;
	r->addr[3] = addr ? addr[3] : 0;
	bpf_ringbuf_submit(r, 0);
}

static __always_inline void remember(struct bpf_sock_addr *ctx, __u16 family, const __u32 *addr)
{
	struct origin o = {};
	o.cgroup = bpf_get_current_cgroup_id();
	o.pid = bpf_get_current_pid_tgid() >> 32;
	o.family = family;
	o.port = (__u16)ctx->user_port;
	o.addr[0] = addr[0];
	o.addr[1] = addr[1];
	o.addr[2] = addr[2];
	o.addr[3] = addr[3];
	__u64 cookie = bpf_get_socket_cookie(ctx);
	bpf_map_update_elem(&origins, &cookie, &o, BPF_ANY);
}

// The DNS responder port of the calling process's instance, for a datagram to port 53; else 0.
static __always_inline __u16 dns_port(struct bpf_sock_addr *ctx)
{
	if (ctx->user_port != bpf_htons(53))
		return 0;
	__u64 cgroup = bpf_get_current_cgroup_id();
	__u32 *port = bpf_map_lookup_elem(&confined, &cgroup);
	return port ? (__u16)*port : 0;
}

SEC("cgroup/connect4")
int warden_connect4(struct bpf_sock_addr *ctx)
{
	struct settings *s = configured();
	if (!s)
		return 0;
	__u32 addr[4] = {ctx->user_ip4, 0, 0, 0};
	if (ctx->type == SOCK_STREAM) {
		remember(ctx, AF_INET, addr);
		ctx->user_ip4 = s->listener4;
		ctx->user_port = s->listener_port;
		return 1;
	}
	__u16 dns = ctx->type == SOCK_DGRAM ? dns_port(ctx) : 0;
	if (dns) {
		remember(ctx, AF_INET, addr);
		ctx->user_ip4 = s->listener4;
		ctx->user_port = dns;
		return 1;
	}
	refuse(REFUSED_UDP, AF_INET, ctx->type, ctx->protocol, (__u16)ctx->user_port, addr);
	return 0;
}

SEC("cgroup/connect6")
int warden_connect6(struct bpf_sock_addr *ctx)
{
	struct settings *s = configured();
	if (!s)
		return 0;
	__u32 addr[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	if (!has_listener6(s))
		return 0;
	__u16 dns = ctx->type == SOCK_DGRAM ? dns_port(ctx) : 0;
	if (ctx->type == SOCK_STREAM || dns) {
		remember(ctx, AF_INET6, addr);
		ctx->user_ip6[0] = s->listener6[0];
		ctx->user_ip6[1] = s->listener6[1];
		ctx->user_ip6[2] = s->listener6[2];
		ctx->user_ip6[3] = s->listener6[3];
		ctx->user_port = ctx->type == SOCK_STREAM ? s->listener_port : dns;
		return 1;
	}
	refuse(REFUSED_UDP, AF_INET6, ctx->type, ctx->protocol, (__u16)ctx->user_port, addr);
	return 0;
}

// Unconnected UDP (sendto): DNS to the responder, the rest refused.
SEC("cgroup/sendmsg4")
int warden_sendmsg4(struct bpf_sock_addr *ctx)
{
	struct settings *s = configured();
	if (!s)
		return 0;
	__u32 addr[4] = {ctx->user_ip4, 0, 0, 0};
	__u16 dns = dns_port(ctx);
	if (dns) {
		remember(ctx, AF_INET, addr);
		ctx->user_ip4 = s->listener4;
		ctx->user_port = dns;
		return 1;
	}
	refuse(REFUSED_UDP, AF_INET, ctx->type, ctx->protocol, (__u16)ctx->user_port, addr);
	return 0;
}

SEC("cgroup/sendmsg6")
int warden_sendmsg6(struct bpf_sock_addr *ctx)
{
	struct settings *s = configured();
	if (!s)
		return 0;
	__u32 addr[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	__u16 dns = has_listener6(s) ? dns_port(ctx) : 0;
	if (dns) {
		remember(ctx, AF_INET6, addr);
		ctx->user_ip6[0] = s->listener6[0];
		ctx->user_ip6[1] = s->listener6[1];
		ctx->user_ip6[2] = s->listener6[2];
		ctx->user_ip6[3] = s->listener6[3];
		ctx->user_port = dns;
		return 1;
	}
	refuse(REFUSED_UDP, AF_INET6, ctx->type, ctx->protocol, (__u16)ctx->user_port, addr);
	return 0;
}

// What the agent reads back from the gateway (recvfrom, getpeername) names the address it asked
// for, not the gateway's.
static __always_inline void restore4(struct bpf_sock_addr *ctx)
{
	struct settings *s = configured();
	if (!s || ctx->user_ip4 != s->listener4)
		return;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct origin *o = bpf_map_lookup_elem(&origins, &cookie);
	if (o && o->family == AF_INET) {
		ctx->user_ip4 = o->addr[0];
		ctx->user_port = o->port;
	}
}

static __always_inline void restore6(struct bpf_sock_addr *ctx)
{
	struct settings *s = configured();
	if (!s || ctx->user_ip6[0] != s->listener6[0] || ctx->user_ip6[1] != s->listener6[1] ||
	    ctx->user_ip6[2] != s->listener6[2] || ctx->user_ip6[3] != s->listener6[3])
		return;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct origin *o = bpf_map_lookup_elem(&origins, &cookie);
	if (o && o->family == AF_INET6) {
		ctx->user_ip6[0] = o->addr[0];
		ctx->user_ip6[1] = o->addr[1];
		ctx->user_ip6[2] = o->addr[2];
		ctx->user_ip6[3] = o->addr[3];
		ctx->user_port = o->port;
	}
}

SEC("cgroup/recvmsg4")
int warden_recvmsg4(struct bpf_sock_addr *ctx)
{
	restore4(ctx);
	return 1;
}

SEC("cgroup/recvmsg6")
int warden_recvmsg6(struct bpf_sock_addr *ctx)
{
	restore6(ctx);
	return 1;
}

SEC("cgroup/getpeername4")
int warden_getpeername4(struct bpf_sock_addr *ctx)
{
	restore4(ctx);
	return 1;
}

SEC("cgroup/getpeername6")
int warden_getpeername6(struct bpf_sock_addr *ctx)
{
	restore6(ctx);
	return 1;
}

// Once the redirected connection is up, its local end is known: file the origin under it.
SEC("sockops")
int warden_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct origin *o = bpf_map_lookup_elem(&origins, &cookie);
	if (!o)
		return 1;
	struct peer p = {};
	p.family = skops->family;
	p.port = skops->local_port;
	if (skops->family == AF_INET) {
		p.addr[0] = skops->local_ip4;
	} else {
		p.addr[0] = skops->local_ip6[0];
		p.addr[1] = skops->local_ip6[1];
		p.addr[2] = skops->local_ip6[2];
		p.addr[3] = skops->local_ip6[3];
	}
	bpf_map_update_elem(&peers, &p, o, BPF_ANY);
	return 1;
}

// Only TCP and UDP sockets: no raw sockets, no ICMP, SCTP or MPTCP that the hooks above do not
// see. (Attempts are reported by `socket_attempts`, which also sees those the kernel refuses
// before this hook for want of a capability.)
SEC("cgroup/sock_create")
int warden_sock_create(struct bpf_sock *sk)
{
	if (sk->type == SOCK_STREAM && sk->protocol == IPPROTO_TCP)
		return 1;
	if (sk->type == SOCK_DGRAM && sk->protocol == IPPROTO_UDP)
		return 1;
	return 0;
}

#define AF_PACKET 17
#define SOCK_TYPE_MASK 0xf

// `socket(2)` as called, by a process of an agent cgroup: reports the kinds of socket the
// confinement refuses (or that need a capability the agent lacks), so each attempt is recorded.
struct socket_args {
	__u64 header;
	__s32 syscall;
	__s32 pad;
	__u64 family;
	__u64 type;
	__u64 protocol;
};

SEC("tracepoint/syscalls/sys_enter_socket")
int warden_socket_attempts(struct socket_args *args)
{
	__u64 cgroup = bpf_get_current_cgroup_id();
	if (!bpf_map_lookup_elem(&confined, &cgroup))
		return 0;
	__u32 family = args->family, type = args->type & SOCK_TYPE_MASK, protocol = args->protocol;
	if (family != AF_INET && family != AF_INET6 && family != AF_PACKET)
		return 0;
	if (family != AF_PACKET) {
		if (type == SOCK_STREAM && (protocol == 0 || protocol == IPPROTO_TCP))
			return 0;
		if (type == SOCK_DGRAM && (protocol == 0 || protocol == IPPROTO_UDP))
			return 0;
	}
	refuse(REFUSED_SOCKET, family, type, protocol, 0, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
