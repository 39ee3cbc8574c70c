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
 */
#include "maps.h"
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Bytes queued at a peer before its direction is handed to TCP; 0 turns
 * backpressure off. Set by the loader (agent --splice-queue-limit). */
const volatile __u32 ml_splice_queue_limit = 6 << 20;

/* 0 when no configuration keeps every byte exact on this kernel (see
 * src/integrity.rs): sockets then stay out of ml_socks. Set by the loader. */
const volatile __u32 ml_splice_enabled = 1;

/* Values of ml_throttled: why a direction takes TCP until it is drained. */
#define ML_HOLD_THROTTLED 1     /* backpressure: the reader fell behind */
#define ML_HOLD_UNTIL_DRAINED 2 /* bytes may have taken TCP before pairing */

/* Minimal CO-RE views of kernel structs (no vmlinux.h): libbpf relocates
 * each field to its offset in the running kernel's BTF. */
typedef struct {
	__u32 val;
} kuid_t___ml;

struct sock___ml {
	void *sk_user_data;
	kuid_t___ml sk_uid;
	int sk_err;
} __attribute__((preserve_access_index));

/* The head of struct tcp_skb_cb, which TCP keeps in skb->cb. */
struct sk_buff___ml {
	char cb[48];
} __attribute__((preserve_access_index));

/* Kernel context of a program (6.3+); absent kernels keep the verdict a
 * pass-through and the loader does not offer it (see src/probe). */
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym __weak;

struct tcp_sock___ml {
	__u32 rcv_nxt;
	__u32 copied_seq;
	__u32 snd_una;
	__u32 write_seq;
} __attribute__((preserve_access_index));

struct sk_psock___ml {
	__u32 msg_tot_len;
} __attribute__((preserve_access_index));

/* The socket's owner as iptables' owner match sees it (sk_uid: the
 * creator's fsuid; an accepted socket inherits its listener's), or a uid
 * no pod uses when it cannot be read. */
static __always_inline __u32 sock_owner_uid(struct bpf_sock_ops *skops)
{
	struct sock___ml *sk;

	if (!skops->sk)
		return (__u32)-1;
	sk = (struct sock___ml *)bpf_skc_to_tcp_sock(skops->sk);
	return sk ? sk->sk_uid.val : (__u32)-1;
}

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

/* The passive end of a connection under a NAT redirect: the active socket
 * that opened it, found by its source endpoint. Returns 1 and fills
 * @partner when one is in ml_socks. */
static __always_inline int nat_partner(const struct ml_sock_key *me,
				       __u64 peer_netns,
				       struct ml_sock_key *partner)
{
	struct ml_endpoint src;
	struct ml_sock_key *active;

	endpoint_of(peer_netns, &me->remote, me->remote_port, &src);
	active = bpf_map_lookup_elem(&ml_active, &src);
	if (!active)
		return 0;
	*partner = *active;
	/* Mirror tuples need no explicit pairing. */
	if (ml_addr_eq(&partner->remote, &me->local) &&
	    partner->remote_port == me->local_port)
		return 0;
	/* An active socket has one passive end: consume the entry, so a later
	 * connection whose NATed source happens to equal this endpoint (a
	 * port clash remapped by conntrack) can never be paired with it. */
	bpf_map_delete_elem(&ml_active, &src);
	return 1;
}

/* The passive end's partner: the active socket that opened the connection,
 * if it is in ml_socks. Sets *nat when it was found across a redirect. */
static __always_inline int find_partner(const struct ml_sock_key *me,
					__u64 peer_netns,
					struct ml_sock_key *partner, int *nat)
{
	struct ml_sock_key *theirs;

	*nat = 0;
	if (!peer_netns)
		return 0;
	mirror_key(me, peer_netns, partner);
	theirs = bpf_map_lookup_elem(&ml_peers, partner);
	if (theirs && ml_sock_key_eq(theirs, me))
		return 1;
	if (nat_partner(me, peer_netns, partner)) {
		*nat = 1;
		return 1;
	}
	return 0;
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

/* May this socket be spliced at all (see "Scope" above)? @proxy: it is
 * the pod's proxy's. */
static __always_inline int spliceable(const struct ml_pod *pod,
				      const struct ml_sock_key *me, int proxy)
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
 * spares the active end a trip into ml_socks and out again (a psock set
 * up and torn down, and the pairing map writes and deletes). */
static __always_inline int to_app_only(const struct ml_pod *pod,
				       const struct ml_addr *src)
{
	return !(pod->flags & ML_POD_SPLICE_APPS) &&
	       ml_is_inbound_passthrough_src(src);
}

/* Puts the socket in ml_socks; 0 on success. */
static __always_inline int insert(struct bpf_sock_ops *skops,
				  struct ml_sock_key *me)
{
	if (bpf_sock_hash_update(skops, &ml_socks, me, BPF_NOEXIST)) {
		/* Full map or clash: this connection uses the TCP stack. */
		ml_count(ML_CNT_SOCK_INSERT_FAILED, 1);
		return -1;
	}
	ml_count(ML_CNT_SOCK_INSERTED, 1);
	record_addr(skops, me);
	/* Ask for state changes so the bookkeeping is removed at close. */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						 BPF_SOCK_OPS_STATE_CB_FLAG);
	return 0;
}

/* An active end whose passive end will not be spliced: out of ml_socks
 * again. Nothing can have been spliced to or from it yet (its passive end
 * was never in the map), and its peer has not been able to send. */
static __always_inline void evict(struct ml_sock_key *active)
{
	struct ml_endpoint src;

	if (!bpf_map_delete_elem(&ml_socks, active))
		ml_count(ML_CNT_SOCK_EVICTED, 1);
	endpoint_of(active->netns, &active->local, active->local_port, &src);
	bpf_map_delete_elem(&ml_active, &src);
	bpf_map_delete_elem(&ml_peers, active);
	bpf_map_delete_elem(&ml_throttled, active);
	bpf_map_delete_elem(&ml_sock_addrs, active);
}

/* The active end: in ml_socks when it may be spliced and its peer may be
 * local: a local address or, for an application socket in a pod with
 * istio-init's iptables, any address (the REDIRECT to the local proxy is
 * invisible here; the proxy's own connects are never redirected). */
static __always_inline void on_active(struct bpf_sock_ops *skops,
				      const struct ml_pod *pod,
				      struct ml_sock_key *me, __u64 peer_netns)
{
	int proxy = sock_owner_uid(skops) == pod->proxy_uid;
	struct ml_sock_key mirror;
	struct ml_endpoint self;

	if (!spliceable(pod, me, proxy) || to_app_only(pod, &me->local) ||
	    (!peer_netns && (proxy || !(pod->flags & ML_POD_IPTABLES)))) {
		ml_count(ML_CNT_SOCK_NOT_SPLICED, 1);
		return;
	}
	if (insert(skops, me))
		return;
	endpoint_of(me->netns, &me->local, me->local_port, &self);
	if (bpf_map_update_elem(&ml_active, &self, me, BPF_ANY))
		ml_count(ML_CNT_STATE_FULL, 1);
	/* Under a REDIRECT the partner is only known when the proxy's side is
	 * established and pairs with us: until then messages take TCP. */
	if (!peer_netns)
		return;
	mirror_key(me, peer_netns, &mirror);
	set_peer(me, &mirror);
}

/* The passive end: joins its active end in ml_socks, or, when it may not
 * be spliced, takes the active end out. */
static __always_inline void on_passive(struct bpf_sock_ops *skops,
				       const struct ml_pod *pod,
				       struct ml_sock_key *me,
				       __u64 peer_netns)
{
	struct ml_sock_key partner;
	int nat;

	if (to_app_only(pod, &me->remote) ||
	    !find_partner(me, peer_netns, &partner, &nat)) {
		ml_count(ML_CNT_SOCK_NOT_SPLICED, 1);
		return;
	}
	if (!spliceable(pod, me, sock_owner_uid(skops) == pod->proxy_uid)) {
		ml_count(ML_CNT_SOCK_NOT_SPLICED, 1);
		evict(&partner);
		return;
	}
	/* The active end becomes able to splice as soon as we are in
	 * ml_socks: whatever it sent so far went through TCP, so it waits
	 * until that is drained. */
	hold_until_drained(&partner);
	if (insert(skops, me)) {
		evict(&partner);
		return;
	}
	set_peer(me, &partner);
	if (nat) {
		set_peer(&partner, me);
		ml_count(ML_CNT_PAIRED_NAT, 1);
	}
}

static __always_inline void on_established(struct bpf_sock_ops *skops,
					   int passive)
{
	struct ml_sock_key me;
	struct ml_pod *pod;
	__u64 netns;

	if (skops->family != AF_INET && skops->family != AF_INET6)
		return;
	if (!ml_splice_enabled)
		return;
	netns = bpf_get_netns_cookie(skops);
	pod = bpf_map_lookup_elem(&ml_pods, &netns);
	if (!pod)
		return;
	sock_key_from_ops(skops, netns, &me);
	if (passive)
		on_passive(skops, pod, &me, ml_peer_netns(netns, &me.remote));
	else
		on_active(skops, pod, &me, ml_peer_netns(netns, &me.remote));
}

/* Is this move to CLOSE a disconnect (connect(AF_UNSPEC)), after which
 * TCP has dropped the unread bytes of the old connection? Straight from
 * ESTABLISHED or CLOSE_WAIT with no socket error: an RST or a timeout sets
 * sk_err first (unread bytes stay readable, as in TCP), a half-closed
 * socket reaches CLOSE from FIN_WAIT or CLOSING through TIME_WAIT, and a
 * socket closed by its owner has already left ml_socks. */
static __always_inline int disconnected(struct bpf_sock_ops *skops)
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

static __always_inline void on_close(struct bpf_sock_ops *skops)
{
	struct ml_sock_key me;
	struct ml_endpoint self;
	struct ml_sock_key *active;
	__u64 netns, cookie;

	if (skops->family != AF_INET && skops->family != AF_INET6)
		return;
	netns = bpf_get_netns_cookie(skops);
	sock_key_from_ops(skops, netns, &me);
	if (disconnected(skops) && !bpf_map_delete_elem(&ml_socks, &me))
		ml_count(ML_CNT_DISCONNECT_PURGED, 1);
	bpf_map_delete_elem(&ml_peers, &me);
	bpf_map_delete_elem(&ml_throttled, &me);
	bpf_map_delete_elem(&ml_sock_addrs, &me);
	cookie = bpf_get_socket_cookie(skops);
	bpf_map_delete_elem(&ml_rcv_cursor, &cookie);
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
	else if (bpf_map_update_elem(&ml_rcv_cursor, &cookie, &end, BPF_ANY))
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
