/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The meshlane authors */
/*
 * splice_sockops.h - splicing's sockops half: which established sockets go
 * into ml_socks, how the two ends of a connection pair, and the per-socket
 * state (ml_sock_state) removed again at close.
 *
 * One entry point, ml_splice_sockops(). Two objects call it from their
 * sockops program: splice.bpf.c (installs without interception) and
 * intercept.bpf.c, whose one sockops program runs both features' work, so
 * that a node with both runs one program per sockops callback, not two.
 * See splice.bpf.c for the rules (scope, pairing, starting without
 * reordering, disconnect); this is their sockops side.
 *
 * Per connection, as built:
 *   active established   sockhash insert, one ml_sock_state update, and an
 *                        ml_active update (keyed by the handshake) only
 *                        where a NAT may hide the pairing (ML_POD_IPTABLES
 *                        on either pod);
 *   passive established  one ml_sock_state lookup (the mirror partner; the
 *                        ml_active lookup only when that misses and a NAT
 *                        may be in between), in-place
 *                        writes of the partner's hold and peer address,
 *                        sockhash insert, one ml_sock_state update;
 *   close                one ml_sock_state lookup; a socket without an
 *                        entry (never spliced) stops there; a spliced one
 *                        clears its peer's peer_addr (handing it its
 *                        message count if higher) and deletes its entry
 *                        and its receive cursor; the last end to close tells
 *                        ml_dest_profile whether the connection was short
 *                        (one lookup, an insert or in-place write only for
 *                        short connections);
 *   active established   also one ml_dest_profile lookup before the
 *                        insert, when ml_splice_min_messages is set.
 *
 * Short connections. A psock's set-up (at the insert) and teardown (at
 * close, through an RCU grace period and a workqueue) cost more than
 * splicing a few messages saves: on the benchmark's machine a connection
 * that exchanges one 64-byte message each way lost 5% of its rate to them,
 * and splicing its two messages won back under 1%. So a destination (the
 * active end's netns, remote address and port) whose last ML_SHORT_STREAK
 * spliced connections were short (neither end sent ml_splice_min_messages
 * messages: sendmsg calls), the last of them less than ML_SHORT_FRESH_NS
 * ago, is not spliced for new connections, except every
 * ML_SHORT_PROBE_EVERY-th, which keeps learning: one longer connection
 * clears the streak as soon as one of its ends sends its
 * ml_splice_min_messages-th message. Each end counts its own sends, so
 * that moment is seen exactly, without a second lookup per message.
 * Skipping is always safe: those bytes take TCP, as they would unspliced.
 */
#ifndef MESHLANE_SPLICE_SOCKOPS_H
#define MESHLANE_SPLICE_SOCKOPS_H

#include "maps.h"
#include "kernel_views.h"

/* 0 when no configuration keeps every byte exact on this kernel (see
 * src/integrity.rs): sockets then stay out of ml_socks. Set by the loader
 * in every object that carries this code. */
const volatile __u32 ml_splice_enabled = 1;

/* A connection neither of whose ends sent this many messages is short (see
 * the top of this file); 0: every connection is spliced and nothing is
 * counted. Set by the loader (Config::splice_min_messages). */
const volatile __u32 ml_splice_min_messages = 8;

/* Short connections in a row that make a destination short. */
#define ML_SHORT_STREAK 8
/* Of the new connections to a short destination, every this-many-th is
 * spliced all the same, to learn when its connections get longer. */
#define ML_SHORT_PROBE_EVERY 16
/* A destination is short only while its short connections keep coming:
 * one whose last short connection closed longer ago than this is spliced
 * again, so a pool of long connections opened later is not kept out by a
 * burst of short ones before it. */
#define ML_SHORT_FRESH_NS 1000000000ULL

/* The socket's owner as iptables' owner match sees it (sk_uid: the
 * creator's fsuid; an accepted socket inherits its listener's), or a uid
 * no pod uses when it cannot be read. */
static __always_inline __u32 ml_sock_owner_uid(struct bpf_sock_ops *skops)
{
	struct sock___ml *sk;

	if (!skops->sk)
		return (__u32)-1;
	sk = (struct sock___ml *)bpf_skc_to_tcp_sock(skops->sk);
	return sk ? sk->sk_uid.val : (__u32)-1;
}

static __always_inline void ml_sock_key_from_ops(struct bpf_sock_ops *skops,
						 __u64 netns,
						 struct ml_sock_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->netns = netns;
	ML_ADDRS_FROM_CTX(skops, &k->local, &k->remote);
	k->local_port = (__u16)ML_RD(skops->local_port);
	k->remote_port = (__u16)bpf_ntohl(ML_RD(skops->remote_port));
}

static __always_inline void ml_mirror_key(const struct ml_sock_key *k,
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

/* The ml_active key of a connection whose active end is at @addr in
 * @netns. Each end reads the two sequence numbers where its established
 * callback runs: the active end after the SYN-ACK (snd_una is its ISN + 1,
 * rcv_nxt the passive end's), the passive end after the handshake's last
 * ACK and before any data in it is queued (rcv_nxt is the active end's
 * ISN + 1, snd_una its own). With data in the SYN (TCP Fast Open) they
 * differ, and the connection is simply not paired. */
static __always_inline void ml_handshake_of(__u64 netns,
					    const struct ml_addr *addr,
					    __u32 active_seq, __u32 passive_seq,
					    struct ml_handshake *h)
{
	__builtin_memset(h, 0, sizeof(*h));
	h->netns = netns;
	h->addr = *addr;
	h->active_seq = active_seq;
	h->passive_seq = passive_seq;
}

/* The socket's kernel address, for its peer's backpressure reads (only
 * ever read with bpf_probe_read_kernel; never decides where bytes go). */
static __always_inline __u64 ml_sock_addr(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;

	return sk ? (__u64)sk : 0;
}

/* May a NAT stand between the two ends of this socket's connection, so
 * that the passive end can only find the active one by its source endpoint
 * (ml_active)? Only istio-init's REDIRECT rules do that to a connection
 * meshlane splices: outbound in the active end's pod, inbound in the
 * passive end's. Asked by both ends (@pod is the asking socket's pod,
 * @peer_netns the other end's), so they agree. */
static __always_inline int ml_may_cross_nat(const struct ml_pod *pod,
					    __u64 netns, __u64 peer_netns)
{
	struct ml_pod *peer;

	if (pod->flags & ML_POD_IPTABLES)
		return 1;
	if (!peer_netns || peer_netns == netns)
		return 0;
	peer = bpf_map_lookup_elem(&ml_pods, &peer_netns);
	return peer && (peer->flags & ML_POD_IPTABLES);
}

/* Removes the ml_active registration of @me (state @st) if it is still
 * its own. */
static __always_inline void ml_forget_active(const struct ml_sock_key *me,
					     const struct ml_sock_state *st)
{
	struct ml_handshake h;
	struct ml_sock_key *active;

	ml_handshake_of(me->netns, &me->local, st->active_seq,
			st->passive_seq, &h);
	active = bpf_map_lookup_elem(&ml_active, &h);
	if (active && ml_sock_key_eq(active, me))
		bpf_map_delete_elem(&ml_active, &h);
}

/* The passive end @me (sequence numbers read from @skops) of a connection
 * under a NAT redirect: the active socket that opened it, found by its
 * handshake. Returns 1 and fills @partner when one is registered. */
static __always_inline int ml_nat_partner(struct bpf_sock_ops *skops,
					  const struct ml_sock_key *me,
					  __u64 peer_netns,
					  struct ml_sock_key *partner)
{
	struct ml_handshake h;
	struct ml_sock_key *active;

	ml_handshake_of(peer_netns, &me->remote, ML_RD(skops->rcv_nxt),
			ML_RD(skops->snd_una), &h);
	active = bpf_map_lookup_elem(&ml_active, &h);
	if (!active)
		return 0;
	*partner = *active;
	/* Mirror tuples need no explicit pairing. */
	if (ml_addr_eq(&partner->remote, &me->local) &&
	    partner->remote_port == me->local_port)
		return 0;
	/* An active socket has one passive end: consume the entry. */
	bpf_map_delete_elem(&ml_active, &h);
	return 1;
}

/* The passive end's partner: the active socket that opened the connection,
 * if it is in ml_socks (it then has an ml_sock_state entry). Returns its
 * entry and fills @partner; sets *nat when it was found across a redirect,
 * which is only looked for where one may be (the rule that made the active
 * end register, asked from @pod's side). */
static __always_inline struct ml_sock_state *
ml_find_partner(struct bpf_sock_ops *skops, const struct ml_pod *pod,
		const struct ml_sock_key *me, __u64 peer_netns,
		struct ml_sock_key *partner, int *nat)
{
	struct ml_sock_state *theirs;

	*nat = 0;
	if (!peer_netns)
		return 0;
	ml_mirror_key(me, peer_netns, partner);
	theirs = bpf_map_lookup_elem(&ml_sock_state, partner);
	if (theirs && ml_sock_key_eq(&theirs->peer, me))
		return theirs;
	if (!ml_may_cross_nat(pod, me->netns, peer_netns) ||
	    !ml_nat_partner(skops, me, peer_netns, partner))
		return 0;
	*nat = 1;
	return bpf_map_lookup_elem(&ml_sock_state, partner);
}

/* The destination of the connection whose active end is @active. */
static __always_inline void ml_dest_of(const struct ml_sock_key *active,
				       struct ml_dest *d)
{
	__builtin_memset(d, 0, sizeof(*d));
	d->netns = active->netns;
	d->addr = active->remote;
	d->port = active->remote_port;
}

/* Should the new active end @me stay out of ml_socks because its
 * destination's connections are short? Counts the connection toward the
 * next probe. */
static __always_inline int ml_dest_is_short(const struct ml_sock_key *me)
{
	struct ml_dest_profile *p;
	struct ml_dest d;

	if (!ml_splice_min_messages)
		return 0;
	ml_dest_of(me, &d);
	p = bpf_map_lookup_elem(&ml_dest_profile, &d);
	if (!p || p->short_streak < ML_SHORT_STREAK)
		return 0;
	if (bpf_ktime_get_ns() - p->last_short_ns > ML_SHORT_FRESH_NS) {
		p->short_streak = 0;
		return 0;
	}
	return ++p->seen % ML_SHORT_PROBE_EVERY != 0;
}

/* The destination of the connection of @me (state @st): a passive end
 * names it through its peer, the active end. */
static __always_inline void ml_dest_of_state(const struct ml_sock_key *me,
					     const struct ml_sock_state *st,
					     struct ml_dest *d)
{
	ml_dest_of(st->flags & ML_SOCK_PASSIVE ? &st->peer : me, d);
}

/* @me (state @st) has just sent its ml_splice_min_messages-th message:
 * its connection is long, and its destination not short, now rather than
 * at its close (a long connection may never close while the destination
 * is judged). sk_msg calls this once per connection end. */
static __always_inline void ml_dest_long(const struct ml_sock_key *me,
					 const struct ml_sock_state *st)
{
	struct ml_dest_profile *p;
	struct ml_dest d;

	if (!st->peer.netns)
		return;
	ml_dest_of_state(me, st, &d);
	p = bpf_map_lookup_elem(&ml_dest_profile, &d);
	if (p)
		p->short_streak = 0;
}

/* The last end of a spliced connection closes: whether the connection
 * (st->msgs: the most either end sent, up to ml_splice_min_messages) was
 * short, for its destination's profile. @me and @st are the closing end's
 * key and state; a passive end names the destination through its peer. */
static __always_inline void ml_dest_learn(const struct ml_sock_key *me,
					  const struct ml_sock_state *st)
{
	struct ml_dest_profile *p, fresh = { .short_streak = 1 };
	struct ml_dest d;

	if (!ml_splice_min_messages || !st->peer.netns)
		return;
	ml_dest_of_state(me, st, &d);
	p = bpf_map_lookup_elem(&ml_dest_profile, &d);
	if (st->msgs >= ml_splice_min_messages) {
		if (p)
			p->short_streak = 0;
		return;
	}
	if (!p) {
		fresh.last_short_ns = bpf_ktime_get_ns();
		bpf_map_update_elem(&ml_dest_profile, &d, &fresh, BPF_NOEXIST);
		return;
	}
	if (p->short_streak < ML_SHORT_STREAK)
		p->short_streak++;
	p->last_short_ns = bpf_ktime_get_ns();
}

/* May this socket be spliced at all (see "Scope" in splice.bpf.c)?
 * @proxy: it is the pod's proxy's. */
static __always_inline int ml_spliceable(const struct ml_pod *pod,
					 const struct ml_sock_key *me,
					 int proxy)
{
	if (pod->flags & ML_POD_NO_SPLICE)
		return 0;
	if (ml_port_listed(&pod->exclude_splice_ports, me->local_port) ||
	    ml_port_listed(&pod->exclude_splice_ports, me->remote_port))
		return 0;
	return proxy || (pod->flags & ML_POD_SPLICE_APPS);
}

/* Is this a connection of the proxy's inbound passthrough (@src is its
 * source, 127.0.0.6 or ::6) in a pod whose application sockets are not
 * spliced? Such a connection always ends at the application, so neither
 * end is ever spliced: deciding it at establish, from the address alone,
 * spares the active end a trip into ml_socks and out again. */
static __always_inline int ml_to_app_only(const struct ml_pod *pod,
					  const struct ml_addr *src)
{
	return !(pod->flags & ML_POD_SPLICE_APPS) &&
	       ml_is_inbound_passthrough_src(src);
}

/* Puts the socket in ml_socks; 0 on success. */
static __always_inline int ml_splice_insert(struct bpf_sock_ops *skops,
					    struct ml_sock_key *me)
{
	if (bpf_sock_hash_update(skops, &ml_socks, me, BPF_NOEXIST)) {
		/* Full map or clash: this connection uses the TCP stack. */
		ml_count(ML_CNT_SOCK_INSERT_FAILED, 1);
		return -1;
	}
	ml_count(ML_CNT_SOCK_INSERTED, 1);
	/* Ask for state changes so the state is removed at close. */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						 BPF_SOCK_OPS_STATE_CB_FLAG);
	return 0;
}

/* Records @st for @me, just put in ml_socks; on failure (which the LRU's
 * sizing rules out) takes it out again, so an entry exists exactly for
 * the sockets in ml_socks. 0 on success. */
static __always_inline int ml_splice_record(struct ml_sock_key *me,
					    const struct ml_sock_state *st)
{
	if (!bpf_map_update_elem(&ml_sock_state, me, st, BPF_ANY))
		return 0;
	ml_count(ML_CNT_STATE_FULL, 1);
	bpf_map_delete_elem(&ml_socks, me);
	return -1;
}

/* An active end whose passive end will not be spliced: out of ml_socks
 * again. Nothing can have been spliced to or from it yet (its passive end
 * was never in the map), and its peer has not been able to send. A rare
 * path: it looks the state up again rather than have every pairing keep a
 * copy (an ml_active entry a NAT pairing consumed is simply not found). */
static __always_inline void ml_splice_evict(struct ml_sock_key *active)
{
	struct ml_sock_state *st;

	if (!bpf_map_delete_elem(&ml_socks, active))
		ml_count(ML_CNT_SOCK_EVICTED, 1);
	st = bpf_map_lookup_elem(&ml_sock_state, active);
	if (st && (st->flags & ML_SOCK_IN_ACTIVE))
		ml_forget_active(active, st);
	bpf_map_delete_elem(&ml_sock_state, active);
}

/* The active end: in ml_socks when it may be spliced and its peer may be
 * local: a local address or, for an application socket in a pod with
 * istio-init's iptables, any address (the REDIRECT to the local proxy is
 * invisible here; the proxy's own connects are never redirected). */
static __always_inline void ml_splice_active(struct bpf_sock_ops *skops,
					     const struct ml_pod *pod,
					     struct ml_sock_key *me,
					     __u64 peer_netns)
{
	int proxy = ml_sock_owner_uid(skops) == pod->proxy_uid;
	struct ml_sock_state st = {};
	struct ml_handshake h;

	if (!ml_spliceable(pod, me, proxy) || ml_to_app_only(pod, &me->local) ||
	    (!peer_netns && (proxy || !(pod->flags & ML_POD_IPTABLES)))) {
		ml_count(ML_CNT_SOCK_NOT_SPLICED, 1);
		return;
	}
	if (ml_dest_is_short(me)) {
		ml_count(ML_CNT_SPLICE_SHORT_SKIPPED, 1);
		return;
	}
	if (ml_splice_insert(skops, me))
		return;
	/* Under a REDIRECT the partner is only known when the proxy's side is
	 * established and pairs with us: until then messages take TCP. */
	if (peer_netns)
		ml_mirror_key(me, peer_netns, &st.peer);
	st.addr = ml_sock_addr(skops);
	if (ml_may_cross_nat(pod, me->netns, peer_netns)) {
		st.flags = ML_SOCK_IN_ACTIVE;
		st.active_seq = ML_RD(skops->snd_una);
		st.passive_seq = ML_RD(skops->rcv_nxt);
	}
	if (ml_splice_record(me, &st))
		return;
	if (!(st.flags & ML_SOCK_IN_ACTIVE))
		return;
	ml_handshake_of(me->netns, &me->local, st.active_seq, st.passive_seq,
			&h);
	if (bpf_map_update_elem(&ml_active, &h, me, BPF_ANY))
		ml_count(ML_CNT_STATE_FULL, 1);
}

/* Makes the passive end @me (kernel address @addr) the target of its
 * active end @partner, whose state is @theirs, before @me enters ml_socks:
 * whatever the active end sent so far went through TCP, so it is held
 * until that is drained (an existing backpressure mark is stricter and
 * stays). The peer address is what tells sk_msg the pair exists. Mirror
 * pairs are written in place; across a NAT the whole entry is replaced, so
 * sk_msg never reads a half-written peer key (nothing else writes it
 * before pairing: sk_msg writes nothing without a peer address). 0 on
 * success. */
static __always_inline int ml_splice_target(const struct ml_sock_key *me,
					    __u64 addr,
					    const struct ml_sock_key *partner,
					    struct ml_sock_state *theirs,
					    int nat)
{
	struct ml_sock_state next;

	if (!nat) {
		/* The hold before the address, in this order (volatile): the
		 * sender reads the address first and splices only with one,
		 * so it never sees the address without the hold. */
		if (theirs->hold != ML_HOLD_THROTTLED)
			*(volatile __u8 *)&theirs->hold = ML_HOLD_UNTIL_DRAINED;
		*(volatile __u64 *)&theirs->peer_addr = addr;
		return 0;
	}
	next = *theirs;
	next.peer = *me;
	next.peer_addr = addr;
	/* ml_nat_partner consumed its ml_active entry. */
	next.flags &= ~ML_SOCK_IN_ACTIVE;
	if (next.hold != ML_HOLD_THROTTLED)
		next.hold = ML_HOLD_UNTIL_DRAINED;
	if (bpf_map_update_elem(&ml_sock_state, partner, &next, BPF_EXIST)) {
		ml_count(ML_CNT_STATE_FULL, 1);
		return -1;
	}
	return 0;
}

/* The passive end: joins its active end in ml_socks, or, when it may not
 * be spliced, takes the active end out. */
static __always_inline void ml_splice_passive(struct bpf_sock_ops *skops,
					      const struct ml_pod *pod,
					      struct ml_sock_key *me,
					      __u64 peer_netns)
{
	struct ml_sock_state *theirs, mine = {};
	struct ml_sock_key partner;
	int nat;

	if (ml_to_app_only(pod, &me->remote)) {
		ml_count(ML_CNT_SOCK_NOT_SPLICED, 1);
		return;
	}
	theirs = ml_find_partner(skops, pod, me, peer_netns, &partner, &nat);
	if (!theirs) {
		ml_count(ML_CNT_SOCK_NOT_SPLICED, 1);
		return;
	}
	if (!ml_spliceable(pod, me, ml_sock_owner_uid(skops) == pod->proxy_uid)) {
		ml_count(ML_CNT_SOCK_NOT_SPLICED, 1);
		ml_splice_evict(&partner);
		return;
	}
	mine.peer = partner;
	mine.flags = ML_SOCK_PASSIVE;
	mine.addr = ml_sock_addr(skops);
	mine.peer_addr = theirs->addr;
	if (ml_splice_target(me, mine.addr, &partner, theirs, nat) ||
	    ml_splice_insert(skops, me)) {
		ml_splice_evict(&partner);
		return;
	}
	if (ml_splice_record(me, &mine)) {
		ml_splice_evict(&partner);
		return;
	}
	if (nat)
		ml_count(ML_CNT_PAIRED_NAT, 1);
}

static __always_inline void ml_splice_established(struct bpf_sock_ops *skops,
						  int passive)
{
	struct ml_sock_key me;
	struct ml_pod *pod;
	__u64 netns;

	if (!ml_splice_enabled)
		return;
	netns = bpf_get_netns_cookie(skops);
	pod = bpf_map_lookup_elem(&ml_pods, &netns);
	if (!pod)
		return;
	ml_sock_key_from_ops(skops, netns, &me);
	if (passive)
		ml_splice_passive(skops, pod, &me, ml_peer_netns(netns, &me.remote));
	else
		ml_splice_active(skops, pod, &me, ml_peer_netns(netns, &me.remote));
}

/* Is this move to CLOSE a disconnect (connect(AF_UNSPEC)), after which
 * TCP has dropped the unread bytes of the old connection? Straight from
 * ESTABLISHED or CLOSE_WAIT with no socket error: an RST or a timeout sets
 * sk_err first (unread bytes stay readable, as in TCP), a half-closed
 * socket reaches CLOSE from FIN_WAIT or CLOSING through TIME_WAIT, and a
 * socket closed by its owner has already left ml_socks. */
static __always_inline int ml_disconnected(struct bpf_sock_ops *skops)
{
	__u32 old = skops->args[0];
	struct sock___ml *sk;

	if (old != BPF_TCP_ESTABLISHED && old != BPF_TCP_CLOSE_WAIT)
		return 0;
	if (!skops->sk)
		return 0;
	sk = (struct sock___ml *)bpf_skc_to_tcp_sock(skops->sk);
	return sk && !sk->sk_err;
}

/* A socket moves to CLOSE. Only a socket with an ml_sock_state entry was
 * ever in ml_socks (the entry is written with the insert and deleted with
 * every removal), so every other one (an application socket that asked for
 * state callbacks for interception, an evicted active end) stops at that
 * one lookup. */
static __always_inline void ml_splice_close(struct bpf_sock_ops *skops)
{
	struct ml_sock_state *st, *peer;
	struct ml_sock_key me;
	__u64 cookie, addr;

	/* The cursor goes first and whatever the state says: a socket whose
	 * owner closed it can linger (FIN_WAIT2, LAST_ACK) while new sockets
	 * push ml_sock_state past the sockhash's size, and an evicted state
	 * must not leave its cursor behind. */
	cookie = bpf_get_socket_cookie(skops);
	bpf_map_delete_elem(&ml_rcv_cursor, &cookie);
	ml_sock_key_from_ops(skops, bpf_get_netns_cookie(skops), &me);
	st = bpf_map_lookup_elem(&ml_sock_state, &me);
	if (!st)
		return;
	addr = st->addr;
	if (ml_disconnected(skops) && !bpf_map_delete_elem(&ml_socks, &me))
		ml_count(ML_CNT_DISCONNECT_PURGED, 1);
	/* The peer stops reading this socket's queue: its address is about
	 * to be freed. It also keeps this end's message count if that is
	 * higher; when it is gone already, this end is the last and its count
	 * is the connection's. */
	peer = st->peer.netns ? bpf_map_lookup_elem(&ml_sock_state, &st->peer) : 0;
	if (peer && peer->peer_addr == addr) {
		peer->peer_addr = 0;
		if (st->msgs > peer->msgs)
			peer->msgs = st->msgs;
	} else {
		ml_dest_learn(&me, st);
	}
	if (st->flags & ML_SOCK_IN_ACTIVE)
		ml_forget_active(&me, st);
	bpf_map_delete_elem(&ml_sock_state, &me);
}

/* Splicing's work for one sockops callback. */
static __always_inline void ml_splice_sockops(struct bpf_sock_ops *skops)
{
	if (skops->family != AF_INET && skops->family != AF_INET6)
		return;
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		ml_splice_established(skops, 0);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		ml_splice_established(skops, 1);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE)
			ml_splice_close(skops);
		break;
	}
}

#endif /* MESHLANE_SPLICE_SOCKOPS_H */
