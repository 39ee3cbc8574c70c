// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Copyright (c) 2026 The meshlane authors */
/*
 * splice.bpf.c - move bytes between local sockets without the TCP/IP stack.
 *
 * Programs:
 *   ml_splice_sockops  (sockops, cgroup v2)  puts established TCP sockets of
 *                      meshed pods into ml_socks and records, in ml_peers,
 *                      which socket each one's bytes go to.
 *   ml_splice_msg      (sk_msg, on ml_socks) redirects every message to the
 *                      peer socket's ingress queue, or passes it to TCP;
 *                      applies backpressure (see below).
 *   ml_splice_verdict  (sk_skb stream verdict, on ml_socks) a pass-through;
 *                      attached only on kernels whose sockmap loses FIONREAD
 *                      and epoll wake-ups without one (see src/probe.rs).
 *
 * Pairing. A socket's peer is normally the mirror of its own 4-tuple in the
 * peer's netns (loopback: same netns; a pod IP: the owning pod's netns).
 * Under istio-init's iptables REDIRECT the proxy's accepted socket
 * (127.0.0.1:15001 <- podIP:eph) does not mirror the app's socket
 * (podIP:eph -> VIP:80). The passive side then finds the active socket by its
 * source endpoint in ml_active and both peers are written explicitly.
 *
 * Backpressure. A redirect to the peer's ingress queue is not bounded by the
 * peer's receive buffer: a fast sender and a slow reader would queue without
 * limit until the node's TCP memory is exhausted and sends fail with ENOMEM.
 * So before each redirect the program reads how much is queued at the peer
 * (psock->msg_tot_len and the TCP receive counters, at CO-RE offsets, with
 * bpf_probe_read_kernel from the address sockops recorded in ml_sock_addrs:
 * sk_msg cannot take a socket reference, and loading needs CAP_PERFMON). At ml_splice_queue_limit the
 * direction is handed to TCP, whose flow control bounds it. It is spliced
 * again only when no byte of it is left on the TCP path (all acknowledged
 * by the peer and read by the reader) and the queue has drained to half,
 * so bytes are never reordered: the reader always drains the psock queue
 * before the TCP receive queue.
 *
 * Splicing starts the same way. The active end is established (and may
 * send) before the passive end is in ml_socks or paired with it, so its
 * first bytes can take TCP; were later bytes spliced at once, they would
 * reach the reader before those. So when the passive end becomes the active
 * end's splice target, sockops marks the active end ML_HOLD_UNTIL_DRAINED
 * (before the target is usable), and sk_msg starts splicing it only once
 * nothing of it is left on the TCP path, like a resumption.
 */
#include "maps.h"
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Bytes queued at a peer before its direction is handed to TCP; 0 turns
 * backpressure off. Set by the loader (agent --splice-queue-limit). */
const volatile __u32 ml_splice_queue_limit = 6 << 20;

/* Values of ml_throttled: why a direction takes TCP until it is drained. */
#define ML_HOLD_THROTTLED 1     /* backpressure: the reader fell behind */
#define ML_HOLD_UNTIL_DRAINED 2 /* bytes may have taken TCP before pairing */

/* Minimal CO-RE views of kernel structs (no vmlinux.h): libbpf relocates
 * each field to its offset in the running kernel's BTF. */
struct sock___ml {
	void *sk_user_data;
} __attribute__((preserve_access_index));

struct tcp_sock___ml {
	__u32 rcv_nxt;
	__u32 copied_seq;
	__u32 snd_una;
	__u32 write_seq;
} __attribute__((preserve_access_index));

struct sk_psock___ml {
	__u32 msg_tot_len;
} __attribute__((preserve_access_index));

/* sk_user_data keeps flags in its low bits (SK_USER_DATA_PTRMASK). */
#define ML_SK_USER_DATA_PTRMASK (~7UL)

static __always_inline void sock_key_from_ops(struct bpf_sock_ops *skops,
					      __u64 netns,
					      struct ml_sock_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->netns = netns;
	ML_ADDRS_FROM_CTX(skops, &k->local, &k->remote);
	k->local_port = (__u16)ML_RD(skops->local_port);
	k->remote_port = (__u16)bpf_ntohl(ML_RD(skops->remote_port));
}

static __always_inline void mirror_key(const struct ml_sock_key *k,
				       __u64 peer_netns,
				       struct ml_sock_key *m)
{
	__builtin_memset(m, 0, sizeof(*m));
	m->netns = peer_netns;
	m->local = k->remote;
	m->remote = k->local;
	m->local_port = k->remote_port;
	m->remote_port = k->local_port;
}

static __always_inline void endpoint_of(__u64 netns, const struct ml_addr *a,
					__u16 port, struct ml_endpoint *e)
{
	__builtin_memset(e, 0, sizeof(*e));
	e->netns = netns;
	e->addr = *a;
	e->port = port;
}

static __always_inline void set_peer(const struct ml_sock_key *k,
				     const struct ml_sock_key *peer)
{
	if (bpf_map_update_elem(&ml_peers, k, peer, BPF_ANY))
		ml_count(ML_CNT_STATE_FULL, 1);
}

/* @k (an active end) is about to get a splice target: whatever it already
 * sent went through TCP, so it must drain before splicing starts. An
 * existing backpressure mark is stricter and stays. */
static __always_inline void hold_until_drained(const struct ml_sock_key *k)
{
	__u8 v = ML_HOLD_UNTIL_DRAINED;
	int err = bpf_map_update_elem(&ml_throttled, k, &v, BPF_NOEXIST);

	if (err && err != -17 /* EEXIST */)
		ml_count(ML_CNT_STATE_FULL, 1);
}

/* The passive end of a connection: find the active socket that opened it.
 * Returns 1 and fills @partner when a NATed partner was paired. */
static __always_inline int pair_across_nat(const struct ml_sock_key *me,
					   __u64 peer_netns)
{
	struct ml_endpoint src;
	struct ml_sock_key *active, partner;

	endpoint_of(peer_netns, &me->remote, me->remote_port, &src);
	active = bpf_map_lookup_elem(&ml_active, &src);
	if (!active)
		return 0;
	partner = *active;
	/* Mirror tuples need no explicit pairing. */
	if (ml_addr_eq(&partner.remote, &me->local) &&
	    partner.remote_port == me->local_port)
		return 0;
	hold_until_drained(&partner);
	set_peer(me, &partner);
	set_peer(&partner, me);
	/* An active socket has one passive end: consume the entry, so a later
	 * connection whose NATed source happens to equal this endpoint (a
	 * port clash remapped by conntrack) can never be paired with it. */
	bpf_map_delete_elem(&ml_active, &src);
	ml_count(ML_CNT_PAIRED_NAT, 1);
	return 1;
}

/* Remembers the socket's kernel address for the backpressure check. */
static __always_inline void record_addr(struct bpf_sock_ops *skops,
					const struct ml_sock_key *me)
{
	struct bpf_sock *sk = skops->sk;
	__u64 addr;

	if (!sk)
		return;
	addr = (__u64)sk;
	if (bpf_map_update_elem(&ml_sock_addrs, me, &addr, BPF_ANY))
		ml_count(ML_CNT_STATE_FULL, 1);
}

static __always_inline void on_established(struct bpf_sock_ops *skops,
					   int passive)
{
	struct ml_sock_key me, mirror;
	struct ml_endpoint self;
	__u64 netns, peer_netns;

	if (skops->family != AF_INET && skops->family != AF_INET6)
		return;
	netns = bpf_get_netns_cookie(skops);
	if (!bpf_map_lookup_elem(&ml_pods, &netns))
		return;

	sock_key_from_ops(skops, netns, &me);
	peer_netns = ml_peer_netns(netns, &me.remote);
	/* The active end already points at us (its mirror): it becomes able
	 * to splice as soon as we are in ml_socks, so mark it first. */
	if (passive && peer_netns) {
		struct ml_sock_key *theirs;

		mirror_key(&me, peer_netns, &mirror);
		theirs = bpf_map_lookup_elem(&ml_peers, &mirror);
		if (theirs && ml_sock_key_eq(theirs, &me))
			hold_until_drained(&mirror);
	}
	if (bpf_sock_hash_update(skops, &ml_socks, &me, BPF_NOEXIST)) {
		/* Full map or clash: this connection uses the TCP stack. */
		ml_count(ML_CNT_SOCK_INSERT_FAILED, 1);
		return;
	}
	ml_count(ML_CNT_SOCK_INSERTED, 1);
	record_addr(skops, &me);
	/* Ask for state changes so the bookkeeping below is removed at close. */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						 BPF_SOCK_OPS_STATE_CB_FLAG);

	if (passive) {
		if (peer_netns && pair_across_nat(&me, peer_netns))
			return;
	} else {
		endpoint_of(netns, &me.local, me.local_port, &self);
		if (bpf_map_update_elem(&ml_active, &self, &me, BPF_ANY))
			ml_count(ML_CNT_STATE_FULL, 1);
	}
	/* Not local (or, under REDIRECT, not known until the proxy's side
	 * is established and pairs with us): messages take the TCP stack. */
	if (!peer_netns)
		return;
	mirror_key(&me, peer_netns, &mirror);
	set_peer(&me, &mirror);
}

static __always_inline void on_close(struct bpf_sock_ops *skops)
{
	struct ml_sock_key me;
	struct ml_endpoint self;
	struct ml_sock_key *active;
	__u64 netns;

	if (skops->family != AF_INET && skops->family != AF_INET6)
		return;
	netns = bpf_get_netns_cookie(skops);
	sock_key_from_ops(skops, netns, &me);
	bpf_map_delete_elem(&ml_peers, &me);
	bpf_map_delete_elem(&ml_throttled, &me);
	bpf_map_delete_elem(&ml_sock_addrs, &me);
	endpoint_of(netns, &me.local, me.local_port, &self);
	active = bpf_map_lookup_elem(&ml_active, &self);
	/* Only remove the entry if it is this socket's (ports are reused). */
	if (active && ml_addr_eq(&active->remote, &me.remote) &&
	    active->remote_port == me.remote_port)
		bpf_map_delete_elem(&ml_active, &self);
}

SEC("sockops")
int ml_splice_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		on_established(skops, 0);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		on_established(skops, 1);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE)
			on_close(skops);
		break;
	}
	return 1;
}

static __always_inline void sock_key_from_msg(struct sk_msg_md *msg,
					      struct ml_sock_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->netns = bpf_get_netns_cookie(msg);
	ML_ADDRS_FROM_CTX(msg, &k->local, &k->remote);
	k->local_port = (__u16)ML_RD(msg->local_port);
	k->remote_port = (__u16)bpf_ntohl(ML_RD(msg->remote_port));
}

/* What the backpressure check needs to know about the receiving socket. */
struct peer_state {
	__u32 queued;     /* bytes on its psock ingress queue */
	__u32 counted;    /* queued is known (the kernel counts it) */
	__u32 unread_tcp; /* bytes its TCP receive path holds unread */
};

/* Reads the peer's state; 0 when the socket is unknown or unreadable.
 * queued needs a kernel whose psock counts its queue (else counted = 0:
 * no backpressure there). The TCP receive counters are only needed before
 * splicing a held direction (@held), so the common path reads two fields. */
static __always_inline int read_peer(struct ml_sock_key *peer, int held,
				     struct peer_state *st)
{
	__u32 rcv_nxt = 0, copied_seq = 0;
	__u64 *addr, psock = 0;
	void *sk;

	addr = bpf_map_lookup_elem(&ml_sock_addrs, peer);
	if (!addr || !*addr)
		return 0;
	sk = (void *)*addr;
	if (bpf_core_field_exists(struct sk_psock___ml, msg_tot_len)) {
		if (bpf_probe_read_kernel(&psock, sizeof(psock),
					  sk + bpf_core_field_offset(struct sock___ml,
								     sk_user_data)))
			return 0;
		psock &= ML_SK_USER_DATA_PTRMASK;
		if (!psock ||
		    bpf_probe_read_kernel(&st->queued, sizeof(st->queued),
					  (void *)psock +
						  bpf_core_field_offset(struct sk_psock___ml,
									msg_tot_len)))
			return 0;
		st->counted = 1;
	}
	if (!held)
		return 1;
	if (bpf_probe_read_kernel(&rcv_nxt, sizeof(rcv_nxt),
				  sk + bpf_core_field_offset(struct tcp_sock___ml,
							     rcv_nxt)) ||
	    bpf_probe_read_kernel(&copied_seq, sizeof(copied_seq),
				  sk + bpf_core_field_offset(struct tcp_sock___ml,
							     copied_seq)))
		return 0;
	st->unread_tcp = rcv_nxt - copied_seq;
	return 1;
}

/* No byte this socket sent through TCP is still unacknowledged. */
static __always_inline int tcp_path_idle(struct sk_msg_md *msg)
{
	struct tcp_sock___ml *tp;
	struct bpf_sock *sk = msg->sk;

	if (!sk)
		return 0;
	tp = (struct tcp_sock___ml *)bpf_skc_to_tcp_sock(sk);
	return tp && tp->snd_una == tp->write_seq;
}

/* May this message be spliced, or must it take TCP (backpressure, or a
 * direction that has not drained since pairing)? */
static __always_inline int may_splice(struct sk_msg_md *msg,
				      struct ml_sock_key *me,
				      struct ml_sock_key *peer)
{
	struct peer_state st = {};
	__u32 limit = ml_splice_queue_limit;
	__u8 throttled = ML_HOLD_THROTTLED, *hold;

	hold = bpf_map_lookup_elem(&ml_throttled, me);
	if (!hold) {
		if (!limit || !read_peer(peer, 0, &st) || !st.counted ||
		    st.queued < limit)
			return 1;
		if (bpf_map_update_elem(&ml_throttled, me, &throttled, BPF_ANY)) {
			ml_count(ML_CNT_STATE_FULL, 1);
			return 1; /* cannot remember it: keep splicing */
		}
		ml_count(ML_CNT_SPLICE_THROTTLED, 1);
		return 0;
	}
	/* Held: splice again only when no byte of this direction is left on
	 * the TCP path (acknowledged by the peer and read by its reader) and,
	 * after backpressure, the peer's queue has drained to half. */
	if (!read_peer(peer, 1, &st) || st.unread_tcp || !tcp_path_idle(msg))
		return 0;
	if (*hold == ML_HOLD_THROTTLED) {
		if (st.queued > limit / 2)
			return 0;
		ml_count(ML_CNT_SPLICE_RESUMED, 1);
	}
	bpf_map_delete_elem(&ml_throttled, me);
	return 1;
}

SEC("sk_msg")
int ml_splice_msg(struct sk_msg_md *msg)
{
	struct ml_sock_key me, *peer;
	__u64 len = msg->size;

	sock_key_from_msg(msg, &me);
	peer = bpf_map_lookup_elem(&ml_peers, &me);
	/* bpf_msg_redirect_hash() returns SK_DROP when the peer is not in the
	 * map; we pass instead, so the message takes the TCP stack. */
	if (peer && may_splice(msg, &me, peer) &&
	    bpf_msg_redirect_hash(msg, &ml_socks, peer, BPF_F_INGRESS) == SK_PASS) {
		ml_count(ML_CNT_MSG_SPLICED, 1);
		ml_count(ML_CNT_BYTES_SPLICED, len);
		return SK_PASS;
	}
	ml_count(ML_CNT_MSG_FALLBACK, 1);
	ml_count(ML_CNT_BYTES_FALLBACK, len);
	return SK_PASS;
}

/* Pass-through stream verdict: with a verdict program on the map the kernel
 * keeps TCP-path bytes on the psock's queue, where FIONREAD and poll see
 * them. Only attached when the probe finds the kernel needs it. */
SEC("sk_skb/stream_verdict")
int ml_splice_verdict(struct __sk_buff *skb)
{
	return SK_PASS;
}
