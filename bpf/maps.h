/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The meshlane authors */
/*
 * maps.h - the maps every meshlane object shares, and small helpers.
 *
 * Each .bpf.c includes this header, so each object declares the same maps.
 * The loader gives every map a pin path under <pin root>/v<N>/maps/ before
 * load; libbpf then reuses the pinned map when it exists, so all objects
 * (and every agent generation) work on one set of kernel maps.
 * Sizes marked "set by the loader" are defaults the agent overrides.
 */
#ifndef MESHLANE_MAPS_H
#define MESHLANE_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "meshlane.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* Meshed pods by netns cookie.
 * Writers: `meshlane pod add/rm` (and later the CNI plugin).
 * Readers: every program. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct ml_pod);
} ml_pods SEC(".maps");

/* Pod IP -> netns cookie of the pod that owns it.
 * Writers: `meshlane pod add/rm`. Readers: sockops (peer netns of a
 * pod-to-pod socket), sk_lookup and connect (is this our pod?). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct ml_addr);
	__type(value, __u64);
} ml_pod_ips SEC(".maps");

/* Established TCP sockets of meshed pods (size set by the loader).
 * Writer: sockops. Reader: sk_msg (redirect target). The kernel removes an
 * entry when its socket closes. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct ml_sock_key);
	__type(value, __u64);
} ml_socks SEC(".maps");

/* Splicing's state of each socket in ml_socks (struct ml_sock_state): the
 * key of the socket its bytes go to (usually the mirror of its own 4-tuple;
 * across an iptables REDIRECT, the NATed partner), both ends' kernel
 * addresses for backpressure, and whether its direction is held on TCP.
 * One entry per socket in ml_socks and only for those: written right after
 * the socket enters ml_socks, deleted when it leaves (close, eviction,
 * disconnect), so a miss at close means splicing never took the socket.
 * An LRU hash sized by the loader so that no live entry is ever evicted
 * (datapath::lru): a lost hold would let a direction splice while its
 * bytes are still on TCP.
 * Writers: sockops (establish; pairing writes the active end's peer
 * address and hold; close clears its peer's peer_addr) and sk_msg (hold,
 * in place). Reader: sk_msg (one lookup per message). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ml_sock_key);
	__type(value, struct ml_sock_state);
} ml_sock_state SEC(".maps");

/* Active (client) sockets by their handshake (address and both initial
 * sequence numbers: struct ml_handshake), so the passive socket at the far
 * end of a NAT redirect finds its partner whatever ports the NAT rewrote.
 * Only sockets whose connection may cross istio-init's REDIRECT register
 * (their pod, or the pod they connect to, has the rules: ML_POD_IPTABLES);
 * everywhere else the partner is found by its mirror tuple.
 * Writer: sockops (active established; deleted when a passive end pairs
 * with it, or at close). Reader: sockops (passive established). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ml_handshake);
	__type(value, struct ml_sock_key);
} ml_active SEC(".maps");

/* What the last spliced connections to each destination carried (struct
 * ml_dest_profile), so that a destination whose connections are all short
 * stops paying a psock's set-up and teardown for nothing: see
 * ml_dest_is_short() in splice_sockops.h. Losing an entry only means
 * splicing that destination again, so a plain LRU of a fixed size; only
 * destinations with short connections get one.
 * Writer: sockops (close of a spliced connection's last end; the streak's
 * probe count at active established). Reader: sockops (active
 * established). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct ml_dest);
	__type(value, struct ml_dest_profile);
} ml_dest_profile SEC(".maps");

/* Receive cursor of each socket in ml_socks that the stream verdict has
 * seen: the TCP sequence number up to which it has passed bytes to the
 * socket's reader (key: socket cookie). The verdict cuts any part of a
 * segment below it (see ml_splice_verdict). A plain hash, not an LRU: a
 * live cursor must never be evicted; ml_socks bounds how many exist.
 * Writer: stream verdict (splice.bpf.c; never for a closed socket).
 * Deleted by sockops at close. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} ml_rcv_cursor SEC(".maps");

/* Per-CPU counters, indexed by enum ml_counter.
 * Writers: every program. Reader: `meshlane status`, metrics. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ML_COUNTER_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} ml_counters SEC(".maps");

/* Proxy inbound listeners by (netns, port); address left zero.
 * Writer: sockops (TCP_LISTEN_CB on a pod's inbound port). Reader:
 * sk_lookup (the socket to assign). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 4096);
	__type(key, struct ml_endpoint);
	__type(value, __u64);
} ml_listeners SEC(".maps");

/* The agent's bypass heartbeat (struct ml_bypass_clock), one slot.
 * Declared here, not in bypass.h, because every object's install must
 * create it: the per-pod sk_lookup program reads it (inbound pass-through)
 * in splice-only installs too.
 * Writer: the agent (src/bypass/sync.rs, every 250 ms; zeroed when bypass
 * stops). Readers: connect4/6 (bypass.h), sk_lookup (inbound.bpf.c). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ml_bypass_clock);
} ml_bypass_clock SEC(".maps");

/* Inbound ports whose destination pod's own inbound config is plain
 * pass-through (no TLS chain, no RBAC/authz, only inert filters, to the
 * pod itself), keyed by (that pod's netns cookie, port); the value is
 * unused (1). A hit lets sk_lookup leave the connection to the normal
 * socket lookup (the app's own listener) instead of the pod's inbound
 * sidecar, and only while the heartbeat in ml_bypass_clock is fresh.
 * Writer: the agent only (src/bypass/inbound.rs through sync.rs), from
 * each registered pod's own live decisions with the inboundPassthrough
 * policy on; entries go when the pod, its stream or its decision goes.
 * Reader: sk_lookup (inbound.bpf.c), in the pod's own netns only. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, struct ml_inbound_key);
	__type(value, __u32);
} ml_inbound_pass SEC(".maps");

/* Read-only settings the loader writes before load (.rodata). */
const volatile __u32 ml_layout_version = MESHLANE_LAYOUT_VERSION;
/* Make the shared enums visible in BTF, and so to Rust's generated types. */
const volatile enum ml_counter ml_counter_count = ML_CNT__MAX;
const volatile enum ml_pod_flag ml_pod_flag_seen = ML_POD_INTERCEPT;
const volatile enum ml_preset ml_preset_seen = ML_PRESET_ISTIO;
const volatile enum ml_orig_flag ml_orig_flag_seen = ML_ORIG_REDIRECTED;

static __always_inline void ml_count(__u32 slot, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&ml_counters, &slot);

	if (v)
		*v += n;
}

/* Is the agent's bypass view fresh (heartbeat within the grace). */
static __always_inline int ml_bypass_fresh(void)
{
	__u32 zero = 0;
	struct ml_bypass_clock *c = bpf_map_lookup_elem(&ml_bypass_clock, &zero);

	if (!c || !c->heartbeat_ns)
		return 0;
	return bpf_ktime_get_ns() - c->heartbeat_ns <= c->grace_ns;
}

static __always_inline void ml_addr_from_v4(struct ml_addr *a, __u32 ip4)
{
	a->a[0] = 0;
	a->a[1] = 0;
	a->a[2] = bpf_htonl(0x0000ffff);
	a->a[3] = ip4;
}

static __always_inline int ml_addr_is_loopback(const struct ml_addr *a)
{
	/* ::1 */
	if (a->a[0] == 0 && a->a[1] == 0 && a->a[2] == 0 &&
	    a->a[3] == bpf_htonl(1))
		return 1;
	/* ::ffff:127.0.0.0/104 */
	if (a->a[0] == 0 && a->a[1] == 0 && a->a[2] == bpf_htonl(0x0000ffff) &&
	    (bpf_ntohl(a->a[3]) >> 24) == 127)
		return 1;
	return 0;
}

static __always_inline int ml_is_v4_mapped(const struct ml_addr *a)
{
	return a->a[0] == 0 && a->a[1] == 0 && a->a[2] == bpf_htonl(0x0000ffff);
}

/* 127.0.0.6 (Envoy's InboundPassthroughBindIpv4) or ::6 */
static __always_inline int ml_is_inbound_passthrough_src(const struct ml_addr *a)
{
	if (ml_is_v4_mapped(a))
		return a->a[3] == bpf_htonl(0x7f000006);
	return a->a[0] == 0 && a->a[1] == 0 && a->a[2] == 0 &&
	       a->a[3] == bpf_htonl(6);
}

static __always_inline int ml_port_listed(const struct ml_port_list *l,
					  __u16 p)
{
	for (int i = 0; i < ML_MAX_PORTS; i++) {
		if (i >= l->len)
			break;
		if (l->port[i] == p)
			return 1;
	}
	return 0;
}

static __always_inline int ml_addr_eq(const struct ml_addr *x,
				      const struct ml_addr *y)
{
	return x->a[0] == y->a[0] && x->a[1] == y->a[1] &&
	       x->a[2] == y->a[2] && x->a[3] == y->a[3];
}

static __always_inline int ml_sock_key_eq(const struct ml_sock_key *x,
					  const struct ml_sock_key *y)
{
	return x->netns == y->netns && ml_addr_eq(&x->local, &y->local) &&
	       ml_addr_eq(&x->remote, &y->remote) &&
	       x->local_port == y->local_port &&
	       x->remote_port == y->remote_port;
}

/* Volatile context read: keeps every load unconditional and at a constant
 * offset from the context pointer. Without it the compiler may merge the
 * IPv4 and IPv6 branches into one load through an offset pointer, which
 * the verifier refuses ("dereference of modified ctx ptr"). */
#define ML_RD(field) (*(volatile __u32 *)&(field))

/* Fills @loc and @rem from a context with the socket-tuple field names
 * shared by bpf_sock_ops, sk_msg_md and bpf_sk_lookup. */
#define ML_ADDRS_FROM_CTX(ctx, loc, rem)					\
	do {									\
		__u32 _fam = ML_RD((ctx)->family);				\
		__u32 _l4 = ML_RD((ctx)->local_ip4);				\
		__u32 _r4 = ML_RD((ctx)->remote_ip4);				\
		__u32 _l6[4] = { ML_RD((ctx)->local_ip6[0]),			\
				 ML_RD((ctx)->local_ip6[1]),			\
				 ML_RD((ctx)->local_ip6[2]),			\
				 ML_RD((ctx)->local_ip6[3]) };			\
		__u32 _r6[4] = { ML_RD((ctx)->remote_ip6[0]),			\
				 ML_RD((ctx)->remote_ip6[1]),			\
				 ML_RD((ctx)->remote_ip6[2]),			\
				 ML_RD((ctx)->remote_ip6[3]) };			\
		if (_fam == AF_INET) {						\
			ml_addr_from_v4((loc), _l4);				\
			ml_addr_from_v4((rem), _r4);				\
		} else {							\
			__builtin_memcpy((loc)->a, _l6, sizeof(_l6));		\
			__builtin_memcpy((rem)->a, _r6, sizeof(_r6));		\
		}								\
	} while (0)

/* The netns a socket talking to @remote from netns @netns lives in:
 * the same netns for loopback, the owning pod for a pod IP, else 0. */
static __always_inline __u64 ml_peer_netns(__u64 netns,
					   const struct ml_addr *remote)
{
	__u64 *owner;

	if (ml_addr_is_loopback(remote))
		return netns;
	owner = bpf_map_lookup_elem(&ml_pod_ips, remote);
	return owner ? *owner : 0;
}

#endif /* MESHLANE_MAPS_H */
