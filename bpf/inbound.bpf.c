// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Copyright (c) 2026 The meshlane authors */
/*
 * inbound.bpf.c - Istio's `PREROUTING -p tcp -j ISTIO_INBOUND`, without
 * iptables: every TCP connection arriving at the pod goes to its proxy's
 * inbound listener.
 *
 * One instance of ml_inbound_lookup is loaded per pod, with the pod's netns
 * cookie in ml_lookup_netns (an sk_lookup program cannot ask which netns it
 * runs in), and attached to that netns only. So it steers by where the
 * packet arrived, not by a list of the pod's addresses: an address added
 * after registration, the IPv6 link-local address, or any other local
 * destination is steered as iptables would, and an address the pod gave
 * away steers nothing here. Every registered pod has this link, even in
 * accelerate mode (then it steers nothing): the agent reads from it whether
 * the pod's netns still exists.
 *
 * One exception (docs/bypass.md, "Inbound at a meshed destination"): a
 * port the agent wrote into ml_inbound_pass for this pod, because the
 * pod's own inbound config for it is plain pass-through and the
 * inboundPassthrough policy is on, is left to the normal socket lookup
 * (the app's own listener), while the agent's heartbeat is fresh.
 *
 * Maps (see intercept.h, maps.h): reads ml_pods, ml_pod_ips (own-traffic
 * check), ml_bypass_clock and ml_inbound_pass (written by the agent), and
 * ml_listeners (written by intercept.bpf.c's sockops); bumps ml_counters.
 * Writes no per-connection state: the proxy's accepted socket gets its
 * SO_ORIGINAL_DST answer from sockops (intercept.bpf.c).
 */
#include "intercept.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The netns cookie of the pod this instance serves. Set by the loader. */
const volatile __u64 ml_lookup_netns = 0;

/* The pod's own connections (the proxy to the app from 127.0.0.6, ::6 or a
 * pod address, or the app to itself) are never steered, like the packets
 * iptables' PREROUTING nat rules never see. IPv4 marks them with lo as the
 * ingress device; IPv6 reports the device of the route (eth0 for a pod
 * address), hence the address checks too. */
static __always_inline int own_traffic(struct bpf_sk_lookup *ctx, __u64 netns,
				       const struct ml_addr *local,
				       const struct ml_addr *remote)
{
	return ML_RD(ctx->ingress_ifindex) == LOOPBACK_IFINDEX ||
	       ml_addr_eq(local, remote) || ml_is_pod_local(netns, remote) ||
	       ml_is_inbound_passthrough_src(remote);
}

/* Is @port of this pod pass-through (its own inbound config, the agent's
 * entry) and the agent's view fresh? The heartbeat is an array slot read
 * first, so a node without bypass pays no hash lookup; with bypass on,
 * one hash lookup per SYN. Any doubt (no entry, no or stale heartbeat):
 * 0, the sidecar. */
static __always_inline int inbound_passthrough(__u64 netns, __u16 port)
{
	struct ml_inbound_key k = {};

	if (!ml_bypass_fresh())
		return 0;
	k.netns = netns;
	k.port = port;
	return bpf_map_lookup_elem(&ml_inbound_pass, &k) != 0;
}

SEC("sk_lookup")
int ml_inbound_lookup(struct bpf_sk_lookup *ctx)
{
	__u64 netns = ml_lookup_netns;
	struct ml_addr local, remote;
	struct ml_endpoint e;
	struct bpf_sock *sk;
	struct ml_pod *pod;
	int v6, err;

	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	pod = ml_intercepted_pod(netns);
	if (!pod)
		return SK_PASS;
	v6 = ML_RD(ctx->family) == AF_INET6;
	ML_ADDRS_FROM_CTX(ctx, &local, &remote);
	if (ml_addr_is_loopback(&local) ||
	    ml_inbound_exempt_port(pod, (__u16)ctx->local_port) ||
	    own_traffic(ctx, netns, &local, &remote))
		return SK_PASS;
	if (inbound_passthrough(netns, (__u16)ctx->local_port)) {
		ml_count(ML_CNT_INBOUND_PASSTHROUGH, 1);
		return SK_PASS; /* the normal lookup: the app's own listener */
	}

	ml_listener_key(netns, pod->inbound_port, v6, &e);
	sk = bpf_map_lookup_elem(&ml_listeners, &e);
	if (!sk && !v6) {
		/* A dual-stack [::] listener takes IPv4 too. */
		ml_listener_key(netns, pod->inbound_port, 1, &e);
		sk = bpf_map_lookup_elem(&ml_listeners, &e);
	}
	if (!sk) {
		/* As with iptables: nobody on the inbound port -> refused.
		 * Never let the connection reach the app around its proxy. */
		ml_count(ML_CNT_INBOUND_NO_LISTENER, 1);
		return SK_DROP;
	}
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		ml_count(ML_CNT_INBOUND_NO_LISTENER, 1);
		return SK_DROP;
	}
	ml_count(ML_CNT_INBOUND_STEERED, 1);
	return SK_PASS;
}
