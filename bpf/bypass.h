/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The meshlane authors */
/*
 * bypass.h - the kernel bypass feature: its maps and the two things the
 * programs do with them.
 *
 *   ml_bypass_pick()    connect: a BYPASS destination of the connecting
 *                       pod -> one endpoint, weighted random, per connection
 *   ml_bypass_opened()  sockops, active established: count the connection
 *   ml_bypass_closing() sockops, state callback when the app closes
 *                       (to FIN_WAIT1 after close(), to LAST_ACK): its
 *                       bytes and the close, final already; then the
 *                       socket's state callbacks stop
 *   ml_bypass_closed()  sockops, state callback to CLOSE: the same for a
 *                       socket not counted yet (half-close, reset, abort)
 *
 * Who writes what (see docs/bypass.md "Kernel half"):
 *   ml_bypass_svc, ml_bypass_eps   the agent only (src/bypass), from each
 *                                  pod's live decisions
 *   ml_bypass_clock                the agent's heartbeat (and the grace);
 *                                  declared in maps.h: inbound.bpf.c
 *                                  reads it too (ml_inbound_pass)
 *   ml_bypass_stats                sockops (per source pod and service)
 *   ml_bypass_cnt                  every hunk here; the agent reads
 *
 * Everything here fails towards the sidecar: no heartbeat, a stale one, an
 * unknown destination, a set gone between two lookups, a family mismatch
 * -> no rewrite, and the caller redirects to the proxy as before.
 */
#ifndef MESHLANE_BYPASS_H
#define MESHLANE_BYPASS_H

#include "maps.h"
#include <bpf/bpf_core_read.h>

/* Minimal CO-RE views of the kernel's socket (no vmlinux.h): what the
 * close accounting reads, with plain loads through the BTF pointer
 * bpf_skc_to_tcp_sock returns (no probe-read helper, which a locked-down
 * kernel refuses). sk_shutdown is a byte (6.1, 6.18) and was a 2-bit field
 * in old kernels: BPF_CORE_READ_BITFIELD reads either. */
struct sock___mlbyp {
	__u8 sk_shutdown;
} __attribute__((preserve_access_index));

struct tcp_sock___mlbyp {
	__u32 write_seq;
} __attribute__((preserve_access_index));

/* sk_shutdown: the socket takes no more data (close(), SHUT_RD). */
#define ML_RCV_SHUTDOWN 1

/* Most endpoints one set holds; a destination with more keeps the sidecar
 * (user space decides, counted as too_many_endpoints). */
#define ML_BYPASS_MAX_EPS 64

/* (source pod, VIP, port): one BYPASS destination of one pod. */
struct ml_bypass_key {
	__u64 netns;          /* the source pod's netns cookie */
	struct ml_addr addr;  /* the VIP (or IP) the app dials */
	__u16 port;           /* host byte order */
	__u16 _pad[3];
};

/* One endpoint of a set; cum_weight is the running sum of the weights up
 * to and including this one (a pick draws r < total and takes the first
 * endpoint with r < cum_weight). */
struct ml_bypass_ep {
	struct ml_addr addr;
	__u16 port; /* host byte order */
	__u16 _pad;
	__u32 cum_weight;
};

/* An endpoint set (shared by every destination with the same content). */
struct ml_bypass_set {
	__u32 count;
	__u32 total_weight;
	struct ml_bypass_ep ep[ML_BYPASS_MAX_EPS];
};

/* Bypassed connections of one (source pod, service), for Istio's TCP
 * metrics. sent_bytes / received_bytes are the app socket's own view
 * (bytes_acked, bytes_received), summed at close. */
struct ml_bypass_stats {
	__u64 opened;
	__u64 closed;
	__u64 sent_bytes;
	__u64 received_bytes;
};

/* Slots of ml_bypass_cnt. */
enum ml_bypass_counter {
	ML_BYP_REWRITTEN = 0,  /* connect sent straight to an endpoint */
	ML_BYP_STALE,          /* a BYPASS destination kept on the sidecar:
				* no or stale heartbeat */
	ML_BYP_NO_SET,         /* destination found, its set was not */
	ML_BYP_FAMILY,         /* endpoint of the other family: sidecar */
	ML_BYP_STATS_FULL,     /* ml_bypass_stats full: connection not counted */
	ML_BYP__MAX,
};

#define ML_BYPASS_COUNTER_SLOTS 8

/* Writer: the agent. Reader: connect4/6. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct ml_bypass_key);
	__type(value, __u32); /* set id in ml_bypass_eps */
} ml_bypass_svc SEC(".maps");

/* Writer: the agent. Reader: connect4/6. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct ml_bypass_set);
} ml_bypass_eps SEC(".maps");

/* Writer: intercept sockops. Reader: the agent (metrics); the agent
 * deletes the entries of pods no longer registered. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ml_bypass_key);
	__type(value, struct ml_bypass_stats);
} ml_bypass_stats SEC(".maps");

/* Per-CPU counters, indexed by enum ml_bypass_counter. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ML_BYPASS_COUNTER_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} ml_bypass_cnt SEC(".maps");

const volatile enum ml_bypass_counter ml_bypass_counter_seen = ML_BYP__MAX;

static __always_inline void ml_bypass_count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&ml_bypass_cnt, &slot);

	if (v)
		*v += 1;
}

/* For a connect of pod @netns to @dst:@port that would go to the sidecar:
 * the endpoint to connect to instead, into @out; 1 when there is one. */
static __always_inline int ml_bypass_pick(__u64 netns,
					  const struct ml_addr *dst,
					  __u16 port,
					  struct ml_bypass_ep *out)
{
	struct ml_bypass_key k = {};
	struct ml_bypass_set *set;
	__u32 *id, r;

	k.netns = netns;
	k.addr = *dst;
	k.port = port;
	id = bpf_map_lookup_elem(&ml_bypass_svc, &k);
	if (!id)
		return 0;
	if (!ml_bypass_fresh()) {
		ml_bypass_count(ML_BYP_STALE);
		return 0;
	}
	set = bpf_map_lookup_elem(&ml_bypass_eps, id);
	if (!set || !set->count || !set->total_weight) {
		ml_bypass_count(ML_BYP_NO_SET);
		return 0;
	}
	r = bpf_get_prandom_u32() % set->total_weight;
	for (int i = 0; i < ML_BYPASS_MAX_EPS; i++) {
		if (i >= set->count)
			break;
		if (r >= set->ep[i].cum_weight)
			continue;
		/* Only an endpoint of the family dialled: an AF_INET socket
		 * reaches IPv4 only, and an AF_INET6 one that dialled a native
		 * IPv6 address may be IPV6_V6ONLY, where an IPv4 endpoint
		 * refuses the connect (ENETUNREACH). The agent writes only
		 * the VIP's family; this keeps any other set harmless. */
		if (ml_is_v4_mapped(&set->ep[i].addr) != ml_is_v4_mapped(dst)) {
			ml_bypass_count(ML_BYP_FAMILY);
			return 0;
		}
		*out = set->ep[i];
		ml_bypass_count(ML_BYP_REWRITTEN);
		return 1;
	}
	ml_bypass_count(ML_BYP_NO_SET);
	return 0;
}

static __always_inline void ml_bypass_key_of(const struct ml_orig_dst *o,
					     struct ml_bypass_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->netns = o->netns;
	k->addr = o->addr;
	k->port = o->port;
}

/* sockops, a bypassed app socket is established: count it and ask for
 * its state callbacks (its bytes are added when it closes). Splicing
 * asks for the same callbacks for the sockets it holds, and only an
 * app socket of a pod that splices app sockets can be one of them: any
 * other is marked quiet, so its callbacks may stop once it is counted
 * (decided now, from the pod record splicing reads at this callback). */
static __always_inline void ml_bypass_opened(struct bpf_sock_ops *skops,
					     struct ml_orig_dst *o)
{
	struct ml_bypass_stats fresh = {}, *s;
	struct ml_bypass_key k;
	struct ml_pod *pod;

	ml_bypass_key_of(o, &k);
	s = bpf_map_lookup_elem(&ml_bypass_stats, &k);
	if (!s) {
		bpf_map_update_elem(&ml_bypass_stats, &k, &fresh, BPF_NOEXIST);
		s = bpf_map_lookup_elem(&ml_bypass_stats, &k);
		if (!s) {
			ml_bypass_count(ML_BYP_STATS_FULL);
			return;
		}
	}
	__sync_fetch_and_add(&s->opened, 1);
	pod = bpf_map_lookup_elem(&ml_pods, &o->netns);
	if (pod && !(pod->flags & ML_POD_SPLICE_APPS))
		o->flags |= ML_ORIG_BYPASS_QUIET;
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						 BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* Payload bytes out of the socket's sequence counters at CLOSE: bytes_acked
 * counts our SYN and an acknowledged FIN, bytes_received the peer's FIN.
 * From the state the socket closes from: FIN_WAIT2 (their FIN arrived,
 * ours was acked), CLOSING and LAST_ACK (ours acked, theirs in) are an
 * orderly close; CLOSE_WAIT (theirs in) an abort after their FIN; any other
 * an abort (a reset or timeout). Exact for orderly closes; an abort may be
 * one byte off. */
static __always_inline __u64 ml_sub(__u64 a, __u64 b)
{
	return a > b ? a - b : 0;
}

/* Adds one closed connection and its bytes to @o's stats; 0 when counted. */
static __always_inline int ml_bypass_count_close(const struct ml_orig_dst *o,
						 __u64 sent, __u64 received)
{
	struct ml_bypass_stats *s;
	struct ml_bypass_key k;

	ml_bypass_key_of(o, &k);
	s = bpf_map_lookup_elem(&ml_bypass_stats, &k);
	if (!s)
		return -1;
	__sync_fetch_and_add(&s->closed, 1);
	__sync_fetch_and_add(&s->sent_bytes, sent);
	__sync_fetch_and_add(&s->received_bytes, received);
	return 0;
}

/* sockops, a bypassed app socket's state moves to @to because its app
 * closed it, at the moment both byte counts are final:
 *   ESTABLISHED -> FIN_WAIT1 after close() or SHUT_RD (the socket takes
 *     no more data: what arrives now resets it, uncounted), not after a
 *     lone SHUT_WR (the app still reads: counted at CLOSE);
 *   CLOSE_WAIT -> LAST_ACK (their FIN, counted in bytes_received, is in).
 * Sent: every byte the app wrote, acknowledged or not (bytes_acked less
 * our SYN, plus write_seq - snd_una: our FIN is queued only after this
 * callback). Then, for a quiet socket, no more state callbacks: none of
 * the programs has anything left to do for it, and each callback would
 * run every sockops program of the cgroup. */
static __always_inline void ml_bypass_closing(struct bpf_sock_ops *skops,
					      struct ml_orig_dst *o)
{
	__u32 from = skops->args[0], to = skops->args[1];
	struct bpf_sock *sk = skops->sk;
	struct tcp_sock___mlbyp *tp;
	__u64 sent, received;
	__u32 unacked;

	if ((o->flags & ML_ORIG_BYPASS_COUNTED) || !sk)
		return;
	tp = (struct tcp_sock___mlbyp *)bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;
	if (to == BPF_TCP_FIN_WAIT1 && from == BPF_TCP_ESTABLISHED) {
		if (!(BPF_CORE_READ_BITFIELD((struct sock___mlbyp *)tp,
					     sk_shutdown) &
		      ML_RCV_SHUTDOWN))
			return;
		received = skops->bytes_received;
	} else if (to == BPF_TCP_LAST_ACK && from == BPF_TCP_CLOSE_WAIT) {
		received = ml_sub(skops->bytes_received, 1);
	} else {
		return;
	}
	unacked = tp->write_seq - skops->snd_una;
	sent = ml_sub(skops->bytes_acked, 1) + unacked;
	if (ml_bypass_count_close(o, sent, received))
		return;
	o->flags |= ML_ORIG_BYPASS_COUNTED;
	if (o->flags & ML_ORIG_BYPASS_QUIET)
		bpf_sock_ops_cb_flags_set(skops,
					  skops->bpf_sock_ops_cb_flags &
						  ~BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* sockops, a socket moves to CLOSE: for a bypassed app socket not counted
 * yet, add its bytes and the close. */
static __always_inline void ml_bypass_closed(struct bpf_sock_ops *skops,
					     const struct ml_orig_dst *o)
{
	__u32 from = skops->args[0];
	int orderly = from == BPF_TCP_FIN_WAIT2 || from == BPF_TCP_CLOSING ||
		      from == BPF_TCP_LAST_ACK;
	int fin_in = orderly || from == BPF_TCP_CLOSE_WAIT;

	if (o->flags & ML_ORIG_BYPASS_COUNTED)
		return;
	ml_bypass_count_close(o, ml_sub(skops->bytes_acked, orderly ? 2 : 1),
			      ml_sub(skops->bytes_received, fin_in ? 1 : 0));
}

#endif /* MESHLANE_BYPASS_H */
