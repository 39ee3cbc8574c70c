/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The meshlane authors */
/*
 * intercept.h - the interception feature: its maps and the decisions that
 * intercept.bpf.c (cgroup hooks) and inbound.bpf.c (one sk_lookup program
 * per pod) share.
 *
 * Per-connection state lives as long as its socket and no longer: the
 * original destination of a redirected connection is socket storage on the
 * application's socket and then on the proxy's accepted socket, so the
 * kernel frees it with the socket and nothing can evict a live entry. The
 * only keyed map, ml_orig_pending, holds a connection for the moment
 * between the application's socket being established and the proxy's
 * accepted socket being created, and is deleted at either end.
 */
#ifndef MESHLANE_INTERCEPT_H
#define MESHLANE_INTERCEPT_H

#include "maps.h"
#include "kernel_views.h"

#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define IPPROTO_TCP 6

#define ISTIO_TUNNEL_PORT 15008
#define ISTIO_STATUS_PORT 15020
#define ISTIO_HEALTH_PORT 15021
#define ISTIO_STATS_PORT 15090
#define DNS_PORT 53
/* lo is always ifindex 1 in every network namespace. */
#define LOOPBACK_IFINDEX 1

/* Original destination of an application socket meshlane redirected
 * (socket storage: freed with the socket).
 * Writers: connect4/6, sendmsg4/6. Readers: getpeername4/6, recvmsg4/6
 * (DNS replies), sockops (copies it to ml_orig_pending at establish). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ml_orig_dst);
} ml_app_orig SEC(".maps");

/* What SO_ORIGINAL_DST answers for a proxy's accepted socket (socket
 * storage on that socket). Writer: sockops (passive established, from
 * ml_orig_pending). Readers: getsockopt, getsockname6. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ml_orig_dst);
} ml_proxy_orig SEC(".maps");

/* A redirected connection between its two ends: keyed by the connection
 * as the proxy's accepted socket will see it (size set by the loader).
 * Writer: sockops (active established of a redirected app socket).
 * Deleted by sockops when the proxy's socket is established (moved to
 * ml_proxy_orig) or when the app socket closes first. Reader: getsockopt
 * (an accepted socket asked before its sockops callback has run). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ml_sock_key);
	__type(value, struct ml_orig_dst);
} ml_orig_pending SEC(".maps");

/* Loopback, or one of the addresses the pod was registered with. */
static __always_inline int ml_is_pod_local(__u64 netns, const struct ml_addr *a)
{
	__u64 *owner;

	if (ml_addr_is_loopback(a))
		return 1;
	owner = bpf_map_lookup_elem(&ml_pod_ips, a);
	return owner && *owner == netns;
}

/* The pod an interception hook acts for, or NULL: meshed, interception on,
 * and no istio-init rules already doing it. */
static __always_inline struct ml_pod *ml_intercepted_pod(__u64 netns)
{
	struct ml_pod *pod = bpf_map_lookup_elem(&ml_pods, &netns);

	if (!pod || !(pod->flags & ML_POD_INTERCEPT) ||
	    (pod->flags & ML_POD_IPTABLES))
		return 0;
	return pod;
}

/* Do these credentials belong to the pod's proxy: iptables' `-m owner
 * --uid-owner/--gid-owner`, which compares the fsuid/fsgid. */
static __always_inline int ml_cred_is_proxy(const struct ml_pod *pod,
					    const struct cred___ml *c)
{
	if (!c)
		return 0;
	return c->fsuid.val == pod->proxy_uid || c->fsgid.val == pod->proxy_gid;
}

/* Is the calling process the pod's proxy (its fs credentials). */
static __always_inline int ml_caller_is_proxy(const struct ml_pod *pod)
{
	struct task_struct___ml *t =
		(struct task_struct___ml *)bpf_get_current_task_btf();

	return ml_cred_is_proxy(pod, t->cred);
}

/* Is @s a socket of the pod's proxy, as iptables' owner match decides it:
 * by the credentials of the socket's file (those of whoever created the
 * socket, whatever process uses it now). Sockets other than TCP fall back
 * to the calling task's fs credentials (there is no BPF way from a UDP
 * IPv4 socket to its file). */
static __always_inline int ml_sock_is_proxy(const struct ml_pod *pod,
					    struct bpf_sock *s)
{
	struct sock___ml *sk = s ? (struct sock___ml *)bpf_skc_to_tcp_sock(s) : 0;

	if (sk)
		return ml_cred_is_proxy(pod, sk->sk_socket->file->f_cred);
	return ml_caller_is_proxy(pod);
}

/* Inbound listener key: the port, and whether the socket is IPv6. */
static __always_inline void ml_listener_key(__u64 netns, __u16 port, int v6,
					    struct ml_endpoint *e)
{
	__builtin_memset(e, 0, sizeof(*e));
	e->netns = netns;
	e->addr.a[0] = v6;
	e->port = port;
}

/* Ports Istio never intercepts inbound (ISTIO_INBOUND's RETURN rules and
 * the include/exclude lists). */
static __always_inline int ml_inbound_exempt_port(const struct ml_pod *pod,
						  __u16 port)
{
	if (port == ISTIO_TUNNEL_PORT || port == ISTIO_STATUS_PORT ||
	    port == ISTIO_HEALTH_PORT || port == ISTIO_STATS_PORT ||
	    port == pod->inbound_port || port == pod->outbound_port)
		return 1;
	if (ml_port_listed(&pod->exclude_inbound_ports, port))
		return 1;
	if (pod->flags & ML_POD_INBOUND_ALL)
		return 0;
	return !ml_port_listed(&pod->include_inbound_ports, port);
}

#endif /* MESHLANE_INTERCEPT_H */
