// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Copyright (c) 2026 The meshlane authors */
/*
 * intercept.bpf.c - what istio-init's iptables rules do, without iptables.
 *
 * Programs (all cgroup v2 except sk_lookup):
 *   ml_connect4/6      outbound TCP connects of meshed, non-proxy processes
 *                      go to the proxy's outbound port on loopback (the
 *                      proxy calling its own pod goes to its inbound port);
 *                      the original destination is kept by socket cookie.
 *                      Opt-in DNS capture sends port 53 to the DNS proxy.
 *   ml_sockops         the node's one sockops program when interception is
 *                      installed: splicing's work (splice_sockops.h), then
 *                      interception's: moves a redirected socket's original
 *                      destination to the key the proxy's accepted socket
 *                      has; registers a pod's inbound listener
 *                      (TCP_LISTEN_CB). One program instead of one per
 *                      feature: every sockops callback of every TCP socket
 *                      of the cgroup runs it.
 *   ml_getsockopt      answers SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST for
 *                      sockets meshlane redirected or steered; every other
 *                      call returns at once, optlen untouched.
 *   ml_getpeername4/6  the app sees the address it connected to.
 *   ml_getsockname6    the proxy sees the original destination as the local
 *                      address of a redirected AF_INET6 socket (HAProxy).
 *   ml_sendmsg4/6, ml_recvmsg4/6  DNS capture for unconnected UDP.
 *
 * The inbound side is inbound.bpf.c (one sk_lookup program per pod netns).
 *
 * Maps (see intercept.h; splicing's in splice_sockops.h): writes
 * ml_app_orig (connect, sendmsg),
 * ml_orig_pending and ml_proxy_orig (sockops; deletes ml_orig_pending) and
 * ml_listeners (sockops); reads ml_pods and ml_pod_ips (written by
 * `meshlane pod add/rm`), ml_counters is bumped everywhere.
 *
 * Decisions follow Istio's istio-iptables rule order, rule by rule (see
 * outbound_verdict() and inbound_exempt_port()); tests/intercept_conformance.rs
 * runs each golden in fixtures/istio/iptables against these programs.
 */
#include "intercept.h"
#include "bypass.h"
#include "splice_sockops.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define SOL_IP 0
#define SOL_IPV6 41
#define SO_ORIGINAL_DST 80
#define IP6T_SO_ORIGINAL_DST 80
#define PAGE_SIZE 4096


struct ml_sockaddr_in {
	__u16 family;
	__u16 port;
	__u32 addr;
	__u8 zero[8];
};

struct ml_sockaddr_in6 {
	__u16 family;
	__u16 port;
	__u32 flowinfo;
	__u32 addr[4];
	__u32 scope_id;
};


static __always_inline int cidr_contains(const struct ml_cidr *c,
					 const struct ml_addr *a)
{
	int bits = c->prefix_len;

	for (int w = 0; w < 4; w++) {
		__u32 mask;

		if (bits <= 0)
			break;
		mask = bits >= 32 ? 0xffffffff : bpf_htonl(~0u << (32 - bits));
		if ((a->a[w] ^ c->addr.a[w]) & mask)
			return 0;
		bits -= 32;
	}
	return 1;
}

static __always_inline int cidr_listed(const struct ml_cidr_list *l,
				       const struct ml_addr *a)
{
	for (int i = 0; i < ML_MAX_CIDRS; i++) {
		if (i >= l->len)
			break;
		if (cidr_contains(&l->cidr[i], a))
			return 1;
	}
	return 0;
}

/* 0.0.0.0 (v4-mapped) or :: */
static __always_inline int is_unspecified(const struct ml_addr *a)
{
	return a->a[0] == 0 && a->a[1] == 0 && a->a[3] == 0 &&
	       (a->a[2] == 0 || a->a[2] == bpf_htonl(0x0000ffff));
}

static __always_inline int is_localhost_exact(const struct ml_addr *a)
{
	/* 127.0.0.1 or ::1: Istio's "-d 127.0.0.1/32 -j RETURN" */
	if (ml_is_v4_mapped(a))
		return a->a[3] == bpf_htonl(0x7f000001);
	return a->a[0] == 0 && a->a[1] == 0 && a->a[2] == 0 &&
	       a->a[3] == bpf_htonl(1);
}

enum verdict { PASS_THROUGH = 0, TO_PROXY = 1, TO_DNS = 2, TO_INBOUND = 3 };

/* Istio leaves out "-o lo ! --uid-owner proxy -j RETURN" when an include
 * range holds a loopback address (istio-iptables HasLoopBackIP). */
static __always_inline int includes_loopback(const struct ml_pod *pod)
{
	for (int i = 0; i < ML_MAX_CIDRS; i++) {
		if (i >= pod->include_outbound_cidrs.len)
			break;
		if (ml_addr_is_loopback(&pod->include_outbound_cidrs.cidr[i].addr))
			return 1;
	}
	return 0;
}

/* Istio's ISTIO_OUTPUT (+ ISTIO_OUTPUT_DNS) chain for one TCP (or UDP,
 * @tcp = 0) destination, rule by rule in the order istio-iptables writes
 * them (see the goldens in fixtures/istio/iptables). */
static __always_inline int outbound_verdict(__u64 netns, struct ml_pod *pod,
					    const struct ml_addr *dst,
					    __u16 port, const struct ml_addr *src,
					    int tcp, int proxy)
{
	int dns = (pod->flags & ML_POD_DNS_CAPTURE) && port == DNS_PORT;
	int local = ml_is_pod_local(netns, dst);

	/* -p tcp/udp --dport 15020 -j RETURN, then excludeOutboundPorts */
	if (port == ISTIO_STATUS_PORT ||
	    ml_port_listed(&pod->exclude_outbound_ports, port))
		return PASS_THROUGH;
	/* -o lo -s 127.0.0.6/32 -j RETURN */
	if (local && ml_is_inbound_passthrough_src(src))
		return PASS_THROUGH;
	if (proxy) {
		/* -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 (,53)
		 *  -m owner --uid-owner proxy -j ISTIO_IN_REDIRECT:
		 * the proxy calling its own pod goes through the inbound side. */
		if (tcp && local && !is_localhost_exact(dst) &&
		    port != ISTIO_TUNNEL_PORT && !dns)
			return TO_INBOUND;
		/* -m owner --uid-owner proxy -j RETURN */
		return PASS_THROUGH;
	}
	/* -o lo [-p tcp ! --dport 53] -m owner ! --uid-owner proxy -j RETURN */
	if (local && !includes_loopback(pod) && !dns)
		return PASS_THROUGH;
	/* ISTIO_OUTPUT_DNS: tcp/udp --dport 53 -j REDIRECT --to-ports 15053 */
	if (dns)
		return TO_DNS;
	if (!tcp)
		return PASS_THROUGH;
	/* -d 127.0.0.1/32 -j RETURN */
	if (is_localhost_exact(dst))
		return PASS_THROUGH;
	/* excludeOutboundIPRanges: -d cidr -j RETURN */
	if (cidr_listed(&pod->exclude_outbound_cidrs, dst))
		return PASS_THROUGH;
	/* includeOutboundIPRanges: -j ISTIO_REDIRECT ("*") or per cidr */
	if ((pod->flags & ML_POD_OUTBOUND_ALL_IPS) ||
	    cidr_listed(&pod->include_outbound_cidrs, dst))
		return TO_PROXY;
	/* includeOutboundPorts: -p tcp --dport p -j ISTIO_REDIRECT */
	if ((pod->flags & ML_POD_OUTBOUND_PORTS_LISTED) &&
	    ml_port_listed(&pod->include_outbound_ports, port))
		return TO_PROXY;
	return PASS_THROUGH;
}

/* Writes @o into @sk's ml_app_orig storage; 0 on success. */
static __always_inline int keep_orig(void *sk, const struct ml_orig_dst *o)
{
	struct ml_orig_dst *kept;

	kept = bpf_sk_storage_get(&ml_app_orig, sk, 0,
				  BPF_SK_STORAGE_GET_F_CREATE);
	if (!kept)
		return -1;
	*kept = *o;
	return 0;
}

/* Keeps the destination the app asked for on its socket; 0 on success.
 * An MPTCP connect runs this hook on the first subflow (a TCP socket),
 * while the app's getpeername asks the MPTCP socket: both get it. */
static __always_inline int remember(struct bpf_sock_addr *ctx, __u64 netns,
				    const struct ml_addr *dst, __u16 port,
				    __u32 flags)
{
	struct bpf_sock *sk = ctx->sk;
	struct ml_orig_dst o = {};
	void *msk;

	if (!sk)
		return -1;
	o.addr = *dst;
	o.port = port;
	o.flags = flags;
	o.netns = netns;
	if (keep_orig(sk, &o))
		return -1;
	msk = bpf_skc_to_mptcp_sock(sk);
	if (msk && keep_orig(msk, &o))
		return -1;
	return 0;
}

#define REFUSE (-1)

/* Common body of connect4/connect6 and sendmsg4/6: decide, remember, and
 * return the new port (host order), 0 to leave the call alone, or REFUSE
 * when the destination could not be kept (the call fails with EPERM
 * instead of reaching the proxy with no destination, or going around it). */
static __always_inline int redirect_port(struct bpf_sock_addr *ctx,
					 const struct ml_addr *dst,
					 const struct ml_addr *src,
					 struct ml_bypass_ep *ep)
{
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct ml_pod *pod = ml_intercepted_pod(netns);
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	int tcp = ctx->type == SOCK_STREAM;
	int proxy, v;

	if (!pod || (ctx->type != SOCK_STREAM && ctx->type != SOCK_DGRAM))
		return 0;
	proxy = ml_sock_is_proxy(pod, ctx->sk);
	/* 0.0.0.0 and [::] mean this host: the kernel sends them over lo to
	 * 127.0.0.1 / ::1, which is what netfilter (and so Istio's rules)
	 * sees; decide on that address. */
	if (is_unspecified(dst)) {
		struct ml_addr local = *dst;

		local.a[3] = ml_is_v4_mapped(dst) ? bpf_htonl(0x7f000001) : bpf_htonl(1);
		v = outbound_verdict(netns, pod, &local, port, src, tcp, proxy);
	} else {
		v = outbound_verdict(netns, pod, dst, port, src, tcp, proxy);
	}
	if (v == PASS_THROUGH) {
		if (tcp)
			ml_count(ML_CNT_CONNECT_EXEMPT, 1);
		return 0;
	}
	/* Bypass (bypass.h): a BYPASS destination of this pod goes straight
	 * to an endpoint instead of the proxy; @ep says where. */
	if (v == TO_PROXY &&
	    ml_bypass_pick(netns, dst, port, ep)) {
		if (remember(ctx, netns, dst, port,
			     ML_ORIG_BYPASSED |
				     (ctx->family == AF_INET6 ? ML_ORIG_IPV6 : 0))) {
			ml_count(ML_CNT_STATE_FULL, 1);
			return REFUSE;
		}
		return ep->port;
	}
	if (remember(ctx, netns, dst, port,
		     (v == TO_DNS ? ML_ORIG_DNS : ML_ORIG_REDIRECTED) |
			     (ctx->family == AF_INET6 ? ML_ORIG_IPV6 : 0))) {
		ml_count(ML_CNT_STATE_FULL, 1);
		return REFUSE;
	}
	if (v == TO_DNS) {
		ml_count(ML_CNT_DNS_REDIRECTED, 1);
		return pod->dns_port;
	}
	ml_count(ML_CNT_CONNECT_REDIRECTED, 1);
	return v == TO_INBOUND ? pod->inbound_port : pod->outbound_port;
}

/* A bpf_sock's addresses (see ML_RD for why every load is volatile). */
static __always_inline void sock_addrs(struct bpf_sock *sk,
				       struct ml_addr *src,
				       struct ml_addr *dst)
{
	__u32 fam = ML_RD(sk->family);
	__u32 s4 = ML_RD(sk->src_ip4), d4 = ML_RD(sk->dst_ip4);
	__u32 s6[4] = { ML_RD(sk->src_ip6[0]), ML_RD(sk->src_ip6[1]),
			ML_RD(sk->src_ip6[2]), ML_RD(sk->src_ip6[3]) };
	__u32 d6[4] = { ML_RD(sk->dst_ip6[0]), ML_RD(sk->dst_ip6[1]),
			ML_RD(sk->dst_ip6[2]), ML_RD(sk->dst_ip6[3]) };

	if (fam == AF_INET) {
		ml_addr_from_v4(src, s4);
		if (dst)
			ml_addr_from_v4(dst, d4);
	} else {
		__builtin_memcpy(src->a, s6, sizeof(s6));
		if (dst)
			__builtin_memcpy(dst->a, d6, sizeof(d6));
	}
}

static __always_inline void sock_src(struct bpf_sock_addr *ctx,
				     struct ml_addr *src)
{
	struct bpf_sock *sk = ctx->sk;

	__builtin_memset(src, 0, sizeof(*src));
	if (!sk)
		return;
	sock_addrs(sk, src, 0);
}

/* Returns the hook's verdict: 1 = go on, 0 = the call fails (EPERM). */
static __always_inline int do_addr4(struct bpf_sock_addr *ctx)
{
	struct ml_bypass_ep ep = {};
	struct ml_addr dst, src;
	int to;

	ml_addr_from_v4(&dst, ctx->user_ip4);
	sock_src(ctx, &src);
	to = redirect_port(ctx, &dst, &src, &ep);
	if (to == REFUSE)
		return 0;
	if (to && ep.port) {
		ctx->user_ip4 = ep.addr.a[3];
		ctx->user_port = bpf_htons(ep.port);
	} else if (to) {
		ctx->user_ip4 = bpf_htonl(0x7f000001);
		ctx->user_port = bpf_htons(to);
	}
	return 1;
}

static __always_inline int do_addr6(struct bpf_sock_addr *ctx)
{
	struct ml_bypass_ep ep = {};
	struct ml_addr dst, src;
	int to;

	dst.a[0] = ctx->user_ip6[0];
	dst.a[1] = ctx->user_ip6[1];
	dst.a[2] = ctx->user_ip6[2];
	dst.a[3] = ctx->user_ip6[3];
	sock_src(ctx, &src);
	to = redirect_port(ctx, &dst, &src, &ep);
	if (to == REFUSE)
		return 0;
	if (to && ep.port) {
		ctx->user_ip6[0] = ep.addr.a[0];
		ctx->user_ip6[1] = ep.addr.a[1];
		ctx->user_ip6[2] = ep.addr.a[2];
		ctx->user_ip6[3] = ep.addr.a[3];
		ctx->user_port = bpf_htons(ep.port);
	} else if (to) {
		if (ml_is_v4_mapped(&dst)) {
			ctx->user_ip6[3] = bpf_htonl(0x7f000001);
		} else {
			ctx->user_ip6[0] = 0;
			ctx->user_ip6[1] = 0;
			ctx->user_ip6[2] = 0;
			ctx->user_ip6[3] = bpf_htonl(1);
		}
		ctx->user_port = bpf_htons(to);
	}
	return 1;
}

SEC("cgroup/connect4")
int ml_connect4(struct bpf_sock_addr *ctx)
{
	return do_addr4(ctx);
}

SEC("cgroup/connect6")
int ml_connect6(struct bpf_sock_addr *ctx)
{
	return do_addr6(ctx);
}

/* Unconnected UDP (sendto): only DNS is captured; remember the server so
 * recvmsg can make the reply look like it came from it. */
SEC("cgroup/sendmsg4")
int ml_sendmsg4(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_DGRAM)
		return 1;
	return do_addr4(ctx);
}

SEC("cgroup/sendmsg6")
int ml_sendmsg6(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_DGRAM)
		return 1;
	return do_addr6(ctx);
}

/* Restores the address the app asked for, for a socket we redirected.
 * Used by getpeername (TCP) and recvmsg (UDP DNS replies). */
static __always_inline void restore_peer(struct bpf_sock_addr *ctx, int v6)
{
	struct ml_orig_dst *o;

	if (!ctx->sk)
		return;
	o = bpf_sk_storage_get(&ml_app_orig, ctx->sk, 0, 0);
	if (!o)
		return;
	/* Only the socket's own pod ever sees its original destination. */
	if (o->netns != bpf_get_netns_cookie(ctx))
		return;
	if (!v6) {
		if (!ml_is_v4_mapped(&o->addr))
			return;
		ctx->user_ip4 = o->addr.a[3];
	} else {
		ctx->user_ip6[0] = o->addr.a[0];
		ctx->user_ip6[1] = o->addr.a[1];
		ctx->user_ip6[2] = o->addr.a[2];
		ctx->user_ip6[3] = o->addr.a[3];
	}
	ctx->user_port = bpf_htons(o->port);
}

/* A datagram from the pod's DNS proxy on loopback: only those get the
 * server's address back (anything else the socket receives is left as is). */
static __always_inline int from_dns_proxy(struct bpf_sock_addr *ctx, int v6)
{
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct ml_pod *pod = bpf_map_lookup_elem(&ml_pods, &netns);
	struct ml_addr from;

	if (!pod || bpf_ntohs((__u16)ctx->user_port) != pod->dns_port)
		return 0;
	if (!v6) {
		ml_addr_from_v4(&from, ctx->user_ip4);
	} else {
		from.a[0] = ctx->user_ip6[0];
		from.a[1] = ctx->user_ip6[1];
		from.a[2] = ctx->user_ip6[2];
		from.a[3] = ctx->user_ip6[3];
	}
	return ml_addr_is_loopback(&from);
}

SEC("cgroup/recvmsg4")
int ml_recvmsg4(struct bpf_sock_addr *ctx)
{
	if (from_dns_proxy(ctx, 0))
		restore_peer(ctx, 0);
	return 1;
}

SEC("cgroup/recvmsg6")
int ml_recvmsg6(struct bpf_sock_addr *ctx)
{
	if (from_dns_proxy(ctx, 1))
		restore_peer(ctx, 1);
	return 1;
}

SEC("cgroup/getpeername4")
int ml_getpeername4(struct bpf_sock_addr *ctx)
{
	restore_peer(ctx, 0);
	return 1;
}

SEC("cgroup/getpeername6")
int ml_getpeername6(struct bpf_sock_addr *ctx)
{
	restore_peer(ctx, 1);
	return 1;
}

/* @sk's key as the sockops key of its own side (netns, local, remote). */
static __always_inline void sock_key(struct bpf_sock *sk, __u64 netns,
				     struct ml_sock_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->netns = netns;
	sock_addrs(sk, &k->local, &k->remote);
	k->local_port = (__u16)ML_RD(sk->src_port);
	k->remote_port = bpf_ntohs((__u16)ML_RD(sk->dst_port));
}

/* The original destination of the connection behind @sk, into @out, when
 * the caller is the pod's own proxy and @sk a TCP socket: socket storage (redirected
 * outbound or steered inbound), or for a redirected socket asked before
 * its sockops callback ran, ml_orig_pending. 0 otherwise. Shared by
 * getsockopt and getsockname6. */
static __always_inline int proxy_orig_dst(struct bpf_sock *sk, __u64 netns,
					  struct ml_orig_dst *out)
{
	struct ml_sock_key k;
	struct ml_orig_dst *o;
	struct ml_pod *pod;

	if (!sk || ML_RD(sk->protocol) != IPPROTO_TCP)
		return 0;
	pod = ml_intercepted_pod(netns);
	if (!pod || !ml_caller_is_proxy(pod))
		return 0;
	o = bpf_sk_storage_get(&ml_proxy_orig, sk, 0, 0);
	if (!o) {
		sock_key(sk, netns, &k);
		o = bpf_map_lookup_elem(&ml_orig_pending, &k);
		if (!o)
			return 0;
	}
	if (o->netns != netns)
		return 0;
	*out = *o;
	return 1;
}

/* For proxies that read the original destination with getsockname on
 * AF_INET6 sockets (HAProxy asks SO_ORIGINAL_DST only on AF_INET ones, so
 * an outbound connection meshlane redirected to [::1]:15001 would be
 * forwarded to the proxy itself): the pod's proxy, and nobody else, sees
 * the original destination as the local address of a redirected socket.
 * Steered inbound sockets need nothing: their local address already is
 * the original destination. */
SEC("cgroup/getsockname6")
int ml_getsockname6(struct bpf_sock_addr *ctx)
{
	struct ml_orig_dst o;

	if (!proxy_orig_dst(ctx->sk, bpf_get_netns_cookie(ctx), &o) ||
	    !(o.flags & ML_ORIG_REDIRECTED))
		return 1;
	ctx->user_ip6[0] = o.addr.a[0];
	ctx->user_ip6[1] = o.addr.a[1];
	ctx->user_ip6[2] = o.addr.a[2];
	ctx->user_ip6[3] = o.addr.a[3];
	ctx->user_port = bpf_htons(o.port);
	return 1;
}

static __always_inline void tuple_key_from_ops(struct bpf_sock_ops *skops,
					       __u64 netns, int mirror,
					       struct ml_sock_key *k)
{
	struct ml_addr l, r;
	__u16 lport = (__u16)ML_RD(skops->local_port);
	__u16 rport = (__u16)bpf_ntohl(ML_RD(skops->remote_port));

	ML_ADDRS_FROM_CTX(skops, &l, &r);
	__builtin_memset(k, 0, sizeof(*k));
	k->netns = netns;
	k->local = mirror ? r : l;
	k->remote = mirror ? l : r;
	k->local_port = mirror ? rport : lport;
	k->remote_port = mirror ? lport : rport;
}

static __always_inline void want_close_cb(struct bpf_sock_ops *skops)
{
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						 BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* The original destination kept on an app socket (redirected or
 * bypassed), or NULL. */
static __always_inline struct ml_orig_dst *app_orig(struct bpf_sock_ops *skops)
{
	if (!skops->sk)
		return 0;
	return bpf_sk_storage_get(&ml_app_orig, skops->sk, 0, 0);
}

/* A redirected app socket is established: its connection waits in
 * ml_orig_pending, keyed as the proxy's accepted socket will see it (our
 * mirror in our netns), until that socket exists. */
static __always_inline void app_established(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct ml_orig_dst *o;
	struct ml_sock_key k;

	if (!sk)
		return;
	o = bpf_sk_storage_get(&ml_app_orig, sk, 0, 0);
	if (o && (o->flags & ML_ORIG_BYPASSED)) {
		ml_bypass_opened(skops, o); /* bypass.h */
		return;
	}
	if (!o || !(o->flags & ML_ORIG_REDIRECTED))
		return;
	tuple_key_from_ops(skops, bpf_get_netns_cookie(skops), 1, &k);
	if (bpf_map_update_elem(&ml_orig_pending, &k, o, BPF_ANY)) {
		ml_count(ML_CNT_STATE_FULL, 1);
		return;
	}
	want_close_cb(skops);
}

/* An accepted socket whose connection came from outside the pod to a
 * port the pod's steering covers: sk_lookup gave it to the proxy (nothing
 * else listens there for it). SO_ORIGINAL_DST answers its own local
 * address, as conntrack does for a connection nothing rewrote. */
static __always_inline int steered(struct bpf_sock_ops *skops, __u64 netns,
				   const struct ml_sock_key *k)
{
	struct ml_pod *pod = ml_intercepted_pod(netns);

	return pod && !ml_addr_is_loopback(&k->local) &&
	       !ml_inbound_exempt_port(pod, k->local_port) &&
	       !ml_is_inbound_passthrough_src(&k->remote) &&
	       !ml_addr_eq(&k->remote, &k->local) &&
	       !ml_is_pod_local(netns, &k->remote);
}

/* A passive socket is established: the proxy's end of a redirected
 * connection takes its original destination from ml_orig_pending; the
 * proxy's end of a steered one gets its local address. */
static __always_inline void passive_established(struct bpf_sock_ops *skops)
{
	__u64 netns = bpf_get_netns_cookie(skops);
	struct ml_orig_dst *o, *kept, s = {};
	struct bpf_sock *sk = skops->sk;
	struct ml_sock_key k;

	/* Only an intercepted pod's proxy has a pending connection or a
	 * steered one: every other passive socket stops at one pod lookup. */
	if (!sk || !ml_intercepted_pod(netns))
		return;
	tuple_key_from_ops(skops, netns, 0, &k);
	o = bpf_map_lookup_elem(&ml_orig_pending, &k);
	if (!o) {
		if (!steered(skops, netns, &k))
			return;
		s.addr = k.local;
		s.port = k.local_port;
		s.flags = ML_ORIG_STEERED |
			  (skops->family == AF_INET6 ? ML_ORIG_IPV6 : 0);
		s.netns = netns;
		o = &s;
	}
	kept = bpf_sk_storage_get(&ml_proxy_orig, sk, 0,
				  BPF_SK_STORAGE_GET_F_CREATE);
	if (!kept) {
		/* A pending entry stays: getsockopt still finds it there, and
		 * the app socket's close deletes it. */
		ml_count(ML_CNT_STATE_FULL, 1);
		return;
	}
	*kept = *o;
	if (o != &s)
		bpf_map_delete_elem(&ml_orig_pending, &k);
}

/* Interception's work for one sockops callback. */
static __always_inline int intercept_sockops(struct bpf_sock_ops *skops)
{
	struct ml_sock_key k;
	struct ml_orig_dst *o;
	struct ml_endpoint e;
	struct ml_pod *pod;
	__u64 netns;

	if (skops->family != AF_INET && skops->family != AF_INET6)
		return 1;

	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		netns = bpf_get_netns_cookie(skops);
		pod = bpf_map_lookup_elem(&ml_pods, &netns);
		if (!pod || (__u16)skops->local_port != pod->inbound_port)
			return 1;
		ml_listener_key(netns, pod->inbound_port,
				skops->family == AF_INET6, &e);
		if (!bpf_sock_hash_update(skops, &ml_listeners, &e, BPF_ANY))
			ml_count(ML_CNT_LISTENER_REGISTERED, 1);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		app_established(skops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		passive_established(skops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		/* A bypassed app socket its app closes: counted as soon as
		 * its bytes are final (bypass.h). */
		if (skops->args[1] == BPF_TCP_FIN_WAIT1 ||
		    skops->args[1] == BPF_TCP_LAST_ACK) {
			o = app_orig(skops);
			if (o && (o->flags & ML_ORIG_BYPASSED))
				ml_bypass_closing(skops, o); /* bypass.h */
			return 1;
		}
		/* A redirected app socket closing before the proxy accepted;
		 * a bypassed one not counted yet. Other sockets get here when
		 * splicing asked for state changes: they never had a pending
		 * entry. */
		if (skops->args[1] != BPF_TCP_CLOSE)
			return 1;
		o = app_orig(skops);
		if (o && (o->flags & ML_ORIG_BYPASSED)) {
			ml_bypass_closed(skops, o); /* bypass.h */
			break;
		}
		if (!o || !(o->flags & ML_ORIG_REDIRECTED))
			return 1;
		tuple_key_from_ops(skops, bpf_get_netns_cookie(skops), 1, &k);
		bpf_map_delete_elem(&ml_orig_pending, &k);
		break;
	}
	return 1;
}

/* Both features' sockops, in the order they ran as two programs: splicing's
 * (a no-op where the integrity plan turned splicing off), then
 * interception's. */
SEC("sockops")
int ml_sockops(struct bpf_sock_ops *skops)
{
	ml_splice_sockops(skops);
	return intercept_sockops(skops);
}

SEC("cgroup/getsockopt")
int ml_getsockopt(struct bpf_sockopt *ctx)
{
	struct ml_orig_dst o;
	int v6;

	/* Fast exit for everything that is not ours; optlen untouched except
	 * for buffers the kernel could not show us (then keep the original). */
	if (ctx->optname != SO_ORIGINAL_DST ||
	    (ctx->level != SOL_IP && ctx->level != SOL_IPV6)) {
		if (ctx->optlen > PAGE_SIZE)
			ctx->optlen = 0;
		return 1;
	}
	/* Only the pod's own proxy may read original destinations. */
	if (!proxy_orig_dst(ctx->sk, bpf_get_netns_cookie(ctx), &o))
		return 1;

	v6 = ctx->level == SOL_IPV6;
	if (!v6) {
		struct ml_sockaddr_in *sin = ctx->optval;

		if (!ml_is_v4_mapped(&o.addr))
			return 1;
		if ((void *)(sin + 1) > ctx->optval_end)
			return 1;
		sin->family = AF_INET;
		sin->port = bpf_htons(o.port);
		sin->addr = o.addr.a[3];
		__builtin_memset(sin->zero, 0, sizeof(sin->zero));
		ctx->optlen = sizeof(*sin);
	} else {
		struct ml_sockaddr_in6 *sin6 = ctx->optval;

		if ((void *)(sin6 + 1) > ctx->optval_end)
			return 1;
		sin6->family = AF_INET6;
		sin6->port = bpf_htons(o.port);
		sin6->flowinfo = 0;
		sin6->addr[0] = o.addr.a[0];
		sin6->addr[1] = o.addr.a[1];
		sin6->addr[2] = o.addr.a[2];
		sin6->addr[3] = o.addr.a[3];
		sin6->scope_id = 0;
		ctx->optlen = sizeof(*sin6);
	}
	ctx->retval = 0;
	ml_count(ML_CNT_ORIG_DST_ANSWERED, 1);
	return 1;
}
