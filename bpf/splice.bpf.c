// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Copyright (c) 2026 The meshlane authors */
/*
 * splice.bpf.c - move bytes between local sockets without the TCP/IP stack.
 *
 * Programs:
 *   ml_sockops         (sockops, cgroup v2)  puts established TCP sockets of
 *                      meshed pods into ml_socks and records, in
 *                      ml_sock_state, which socket each one's bytes go to
 *                      (splice_sockops.h). Attached only where interception
 *                      is not installed: intercept.bpf.c's ml_sockops runs
 *                      the same code besides its own.
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
 * handshake in ml_active (its source address and the two initial sequence
 * numbers, which no NAT rewrites; the source port may be: conntrack remaps
 * it when the redirected tuple clashes with an older connection) and both
 * peers are written explicitly. Only
 * sockets whose connection may cross such a REDIRECT (their pod or the pod
 * they connect to has istio-init's rules) register in ml_active.
 *
 * Backpressure. A redirect to the peer's ingress queue is not bounded by the
 * peer's receive buffer: a fast sender and a slow reader would queue without
 * limit until the node's TCP memory is exhausted and sends fail with ENOMEM.
 * So before each redirect the program reads how much is queued at the peer
 * (psock->msg_tot_len and the TCP receive counters, at CO-RE offsets, with
 * bpf_probe_read_kernel from the peer's address sockops recorded in the
 * sender's ml_sock_state entry: sk_msg cannot take a socket reference, and
 * loading needs CAP_PERFMON). At ml_splice_queue_limit the direction is
 * handed to TCP, whose flow control bounds it. It is spliced
 * again only when no byte of it is left on the TCP path (every byte the
 * sender wrote to TCP has reached the peer, rcv_nxt == write_seq, and its
 * reader has read them, copied_seq == rcv_nxt) and the queue has drained
 * to half, so bytes are never reordered: the reader always drains the
 * psock queue before the TCP receive queue. Arrival, not acknowledgement:
 * on a busy stream snd_una trails write_seq by every byte in flight and
 * by delayed ACKs, so a held direction waiting for its ACKs kept taking
 * TCP for most of a bulk transfer (issue 14).
 *
 * Scope. Only a socket whose reader cannot tell is put in ml_socks: on
 * the kernels this runs on, a socket in a sockhash stops behaving like TCP
 * in ways an application can see (splice(2) misses redirected bytes,
 * FIONREAD misses TCP-path bytes, urgent data arrives in-band; see
 * docs/ARCHITECTURE.md, kernel notes). So by default only the pod's proxy
 * sockets (owner uid = the pod's proxy uid, as iptables' owner match sees
 * it) with a local peer are spliced; an application socket only where the
 * operator opted in (ML_POD_SPLICE_APPS, accepted by user space only when
 * the kernel probes allow it). Both ends of a connection must qualify: the
 * active end goes in at establish, and the passive end, established after
 * it, either joins it or takes it out again (ml_socks delete), so no
 * socket sits in the map without a spliceable peer.
 *
 * Disconnect. connect(AF_UNSPEC) takes a socket to CLOSE without closing
 * it; the kernel keeps its psock, so bytes spliced to the old connection
 * and not read would be read by the next one. TCP discards them, so
 * sockops removes the socket from ml_socks at a local CLOSE.
 *
 * Overlapping retransmissions. With a stream verdict on the map, the
 * kernel hands whole skbs from the TCP receive queue to the psock
 * (tcp_read_skb), including a retransmitted segment that overlaps bytes
 * already delivered (seq < rcv_nxt < end_seq, which TCP queues whole and
 * normal readers skip by offset). ml_splice_verdict keeps a per-socket
 * cursor and cuts that head off before the bytes reach the reader.
 *
 * Splicing starts the same way. The active end is established (and may
 * send) before the passive end is in ml_socks or paired with it, so its
 * first bytes can take TCP; were later bytes spliced at once, they would
 * reach the reader before those. So when the passive end becomes the active
 * end's splice target, sockops marks the active end ML_HOLD_UNTIL_DRAINED
 * (before the target is usable), and sk_msg starts splicing it only once
 * nothing of it is left on the TCP path, like a resumption.
 *
 * Short connections. A destination whose recent connections each carried
 * only a few messages is not spliced (ml_dest_profile, see
 * splice_sockops.h): the psock would cost more than splicing saves. sk_msg
 * counts a connection's messages for it, up to ml_splice_min_messages.
 *
 * Per message, sk_msg does one ml_sock_state lookup (the peer's key and
 * address and the direction's hold, all in the sender's entry); holds and
 * the message count are written in place.
 */
#include "splice_sockops.h"
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Bytes queued at a peer before its direction is handed to TCP; 0 turns
 * backpressure off. Set by the loader (agent --splice-queue-limit). */
const volatile __u32 ml_splice_queue_limit = 6 << 20;

/* Kernel context of a program (6.3+); absent kernels keep the verdict a
 * pass-through and the loader does not offer it (see src/probe). */
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym __weak;

/* sk_user_data keeps flags in its low bits (SK_USER_DATA_PTRMASK). */
#define ML_SK_USER_DATA_PTRMASK (~7UL)

/* Splicing's sockops, for installs without interception. */
SEC("sockops")
int ml_sockops(struct bpf_sock_ops *skops)
{
	ml_splice_sockops(skops);
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
	__u32 rcv_nxt;    /* the next byte it expects through TCP */
};

/* Reads the peer's state from its kernel address @addr; 0 when it is not
 * known (not paired yet, or closed) or unreadable. queued needs a kernel
 * whose psock counts its queue (else counted = 0: no backpressure there).
 * The TCP receive counters are only needed before splicing a held
 * direction (@held), so the common path reads two fields. */
static __always_inline int read_peer(__u64 addr, int held,
				     struct peer_state *st)
{
	__u32 rcv_nxt = 0, copied_seq = 0;
	__u64 psock = 0;
	void *sk;

	if (!addr)
		return 0;
	sk = (void *)addr;
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
	st->rcv_nxt = rcv_nxt;
	return 1;
}

/* Every byte this socket wrote to TCP has reached its peer, whose rcv_nxt
 * is @peer_rcv_nxt (in order: rcv_nxt only moves over contiguous bytes;
 * both ends count in the same sequence space, which a REDIRECT leaves
 * alone). Nothing of this direction is in flight or still queued to send. */
static __always_inline int tcp_path_arrived(struct sk_msg_md *msg,
					    __u32 peer_rcv_nxt)
{
	struct tcp_sock___ml *tp;
	struct bpf_sock *sk = msg->sk;

	if (!sk)
		return 0;
	tp = (struct tcp_sock___ml *)bpf_skc_to_tcp_sock(sk);
	return tp && tp->write_seq == peer_rcv_nxt;
}

/* What may_splice() decided for one message. */
enum splice_verdict {
	TAKE_TCP = 0,
	SPLICE = 1,        /* nothing held */
	SPLICE_RELEASE = 2 /* held, and drained: release the hold once the
			    * redirect succeeded */
};

/* May this message of the socket whose state is @me be spliced, or must it
 * take TCP (not paired yet, backpressure, or a direction that has not
 * drained since pairing)? The hold is set and cleared in place: the entry
 * lives as long as the socket is in ml_socks, and nothing else writes it
 * once paired.
 *
 * Paired means the peer's address is known: the passive end writes it,
 * after the hold, before it enters ml_socks. Reading the address first
 * (volatile: in that order) closes the window where a sender saw no hold,
 * the pair formed, and its message was spliced ahead of bytes it had sent
 * through TCP (on x86, whose stores and loads keep their order). A hold is
 * released only by a message that was really spliced (see ml_splice_msg). */
static __always_inline enum splice_verdict may_splice(struct sk_msg_md *msg,
						      struct ml_sock_state *me)
{
	struct peer_state st = {};
	__u32 limit = ml_splice_queue_limit;
	__u64 peer = *(volatile __u64 *)&me->peer_addr;
	__u8 hold;

	if (!peer)
		return TAKE_TCP;
	hold = *(volatile __u8 *)&me->hold;
	if (!hold) {
		if (!limit || !read_peer(peer, 0, &st) || !st.counted ||
		    st.queued < limit)
			return SPLICE;
		me->hold = ML_HOLD_THROTTLED;
		ml_count(ML_CNT_SPLICE_THROTTLED, 1);
		return TAKE_TCP;
	}
	/* Held: splice again only when no byte of this direction is left on
	 * the TCP path (arrived at the peer and read by its reader) and,
	 * after backpressure, the peer's queue has drained to half. */
	if (!read_peer(peer, 1, &st) || st.unread_tcp ||
	    !tcp_path_arrived(msg, st.rcv_nxt))
		return TAKE_TCP;
	if (hold == ML_HOLD_THROTTLED && st.queued > limit / 2)
		return TAKE_TCP;
	return SPLICE_RELEASE;
}

SEC("sk_msg")
int ml_splice_msg(struct sk_msg_md *msg)
{
	enum splice_verdict v;
	struct ml_sock_state *st;
	struct ml_sock_key me;
	__u64 len = msg->size;

	sock_key_from_msg(msg, &me);
	st = bpf_map_lookup_elem(&ml_sock_state, &me);
	/* The connection's length, for its destination's profile: counted
	 * only as far as it decides anything (one socket's sends are
	 * serialised by its lock). */
	if (st && st->msgs < ml_splice_min_messages &&
	    ++st->msgs == ml_splice_min_messages)
		ml_dest_long(&me, st);
	/* A peer not known yet (netns 0: across a REDIRECT, before pairing)
	 * takes TCP. bpf_msg_redirect_hash() returns SK_DROP when the peer is
	 * not in the map; we pass instead, so the message takes the TCP stack,
	 * and a hold stays: those bytes must drain before the next splice. */
	if (st && st->peer.netns) {
		v = may_splice(msg, st);
		if (v != TAKE_TCP &&
		    bpf_msg_redirect_hash(msg, &ml_socks, &st->peer,
					  BPF_F_INGRESS) == SK_PASS) {
			if (v == SPLICE_RELEASE) {
				if (st->hold == ML_HOLD_THROTTLED)
					ml_count(ML_CNT_SPLICE_RESUMED, 1);
				st->hold = ML_HOLD_NONE;
			}
			ml_count(ML_CNT_MSG_SPLICED, 1);
			ml_count(ML_CNT_BYTES_SPLICED, len);
			return SK_PASS;
		}
	}
	ml_count(ML_CNT_MSG_FALLBACK, 1);
	ml_count(ML_CNT_BYTES_FALLBACK, len);
	return SK_PASS;
}

/* Most a verdict run cuts: 64 helper calls of 4095 bytes (the helper's
 * limit per call) cover any overlap of a 256 KiB skb. */
#define ML_TRIM_STEP 4095
#define ML_TRIM_STEPS 64

/* TCP's copied_seq of the skb's socket, or @fallback when unreadable. */
static __always_inline __u32 tcp_copied_seq(struct __sk_buff *skb,
					    __u32 fallback)
{
	struct tcp_sock___ml *tp;

	if (!skb->sk)
		return fallback;
	tp = (struct tcp_sock___ml *)bpf_skc_to_tcp_sock(skb->sk);
	return tp ? tp->copied_seq : fallback;
}

/* Cuts @n bytes off the head of @skb; 0 on success. */
static __always_inline int trim_head(struct __sk_buff *skb, __u32 n)
{
	for (int i = 0; i < ML_TRIM_STEPS && n; i++) {
		__u32 step = n < ML_TRIM_STEP ? n : ML_TRIM_STEP;

		if (bpf_skb_adjust_room(skb, -(__s32)step, 0, 0))
			return -1;
		n -= step;
	}
	return n ? -1 : 0;
}

/* Is @skb's socket already in TCP_CLOSE? A socket that shut down its
 * writing side and then gets its peer's FIN in FIN_WAIT2 closes (its state
 * callback deletes its cursor) before that FIN's skb reaches the verdict,
 * while its owner still holds it. No more segments can come for it, so
 * its cursor must not be created again: nothing would delete it, and a
 * full ml_rcv_cursor would leave later sockets without one. */
static __always_inline int socket_closed(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;

	return sk && sk->state == BPF_TCP_CLOSE;
}

/* Stream verdict: attached only when the data path needs TCP-path bytes
 * on the psock's queue (see src/loader.rs). It passes every byte to the
 * socket's own reader exactly once: the kernel hands it whole skbs from
 * the TCP receive queue, and a retransmitted segment that overlaps bytes
 * already passed on keeps its old head (TCP queues it whole); that head is
 * cut here, using the skb's TCP sequence numbers (struct tcp_skb_cb at the
 * start of skb->cb) against the socket's cursor in ml_rcv_cursor. */
SEC("sk_skb/stream_verdict")
int ml_splice_verdict(struct __sk_buff *skb)
{
	__u32 seqs[2], *cursor, start, end, overlap;
	struct sk_buff___ml *kskb;
	__u64 cookie;

	if (!bpf_ksym_exists(bpf_cast_to_kern_ctx))
		return SK_PASS;
	kskb = bpf_cast_to_kern_ctx(skb);
	/* struct tcp_skb_cb begins with seq and end_seq. */
	seqs[0] = *(__u32 *)&kskb->cb[0];
	seqs[1] = *(__u32 *)&kskb->cb[4];
	cookie = bpf_get_socket_cookie(skb);
	cursor = bpf_map_lookup_elem(&ml_rcv_cursor, &cookie);
	/* Without a cursor (the first skb since the verdict was attached),
	 * what the reader consumed natively: TCP's copied_seq. */
	start = cursor ? *cursor : tcp_copied_seq(skb, seqs[0]);
	end = (__s32)(seqs[1] - start) > 0 ? seqs[1] : start;
	if (cursor)
		*cursor = end;
	else if (!socket_closed(skb) &&
		 bpf_map_update_elem(&ml_rcv_cursor, &cookie, &end, BPF_ANY))
		ml_count(ML_CNT_STATE_FULL, 1);
	if ((__s32)(start - seqs[0]) <= 0)
		return SK_PASS;
	overlap = start - seqs[0];
	if (overlap >= skb->len) {
		/* Nothing new (TCP drops such segments before queueing them). */
		ml_count(ML_CNT_OVERLAP_TRIMMED, 1);
		ml_count(ML_CNT_OVERLAP_BYTES, skb->len);
		return SK_DROP;
	}
	if (trim_head(skb, overlap)) {
		ml_count(ML_CNT_OVERLAP_UNTRIMMED, 1);
		return SK_PASS;
	}
	ml_count(ML_CNT_OVERLAP_TRIMMED, 1);
	ml_count(ML_CNT_OVERLAP_BYTES, overlap);
	return SK_PASS;
}
