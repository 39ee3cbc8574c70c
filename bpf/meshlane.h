/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The meshlane authors */
/*
 * meshlane.h - every structure the kernel and user space share.
 *
 * This header is the single definition of the kernel-visible layout: the
 * BPF programs include it, and Rust sees the same structs through the
 * `types` module that libbpf-cargo generates from the objects' BTF.
 * Any change to a struct here, to a map's key/value type or to a map's
 * type changes what is pinned under the pin root, so it MUST bump
 * MESHLANE_LAYOUT_VERSION (the pin path carries it: <pin root>/v<N>/).
 */
#ifndef MESHLANE_H
#define MESHLANE_H

#include <linux/types.h>

#define MESHLANE_LAYOUT_VERSION 8

/* Capacity of the per-pod lists. Bigger lists are refused by user space
 * with an error naming the pod and the list, never truncated. */
#define ML_MAX_PORTS 32
#define ML_MAX_CIDRS 16
#define ML_POD_NAME_LEN 64

/* An IP address. IPv4 is stored v4-mapped (::ffff:a.b.c.d) so one key type
 * serves both families and a dual-stack socket keys the same way as an
 * AF_INET one. Network byte order. */
struct ml_addr {
	__u32 a[4];
};

/* A prefix over the 128-bit (mapped) form: an IPv4 /24 is stored as /120. */
struct ml_cidr {
	struct ml_addr addr;
	__u32 prefix_len;
};

struct ml_port_list {
	__u16 port[ML_MAX_PORTS]; /* host byte order */
	__u32 len;
};

struct ml_cidr_list {
	struct ml_cidr cidr[ML_MAX_CIDRS];
	__u32 len;
};

/* ml_pod.flags */
enum ml_pod_flag {
	/* eBPF interception (connect redirect, sk_lookup) is on for the pod. */
	ML_POD_INTERCEPT = 1 << 0,
	/* Istio DNS proxying: port 53 goes to the proxy's DNS port. */
	ML_POD_DNS_CAPTURE = 1 << 1,
	/* The pod's netns has istio-init nat rules: splice only, never
	 * intercept with eBPF (it would intercept twice). */
	ML_POD_IPTABLES = 1 << 2,
	/* includeInboundPorts="*" (Istio's default): every port not excluded. */
	ML_POD_INBOUND_ALL = 1 << 3,
	/* includeOutboundIPRanges="*" (Istio's default). */
	ML_POD_OUTBOUND_ALL_IPS = 1 << 4,
	/* includeOutboundPorts is a list (not all ports). */
	ML_POD_OUTBOUND_PORTS_LISTED = 1 << 5,
	/* The pod allows the xDS fast path (bypass). */
	ML_POD_BYPASS = 1 << 6,
	/* Operator opt-out: no socket of the pod is ever spliced (plain TCP). */
	ML_POD_NO_SPLICE = 1 << 7,
	/* Operator opt-in: the pod's application sockets are spliced too, not
	 * only its proxy's. User space accepts it only where the kernel
	 * probes show an application cannot tell (see src/probe). */
	ML_POD_SPLICE_APPS = 1 << 8,
};

/* Mesh presets; user space fills the ports and uid from them. */
enum ml_preset {
	ML_PRESET_CUSTOM = 0,
	ML_PRESET_ISTIO = 1,
	ML_PRESET_LINKERD = 2,
	ML_PRESET_KUMA = 3,
};

/* One meshed pod, keyed by its netns cookie in ml_pods. */
struct ml_pod {
	__u32 proxy_uid;
	__u32 proxy_gid;
	__u16 outbound_port; /* Istio 15001 */
	__u16 inbound_port;  /* Istio 15006 */
	__u16 dns_port;      /* Istio 15053 */
	__u16 preset;        /* enum ml_preset */
	__u32 flags;         /* enum ml_pod_flag */
	struct ml_port_list include_inbound_ports;
	struct ml_port_list exclude_inbound_ports;
	struct ml_port_list include_outbound_ports;
	struct ml_port_list exclude_outbound_ports;
	struct ml_cidr_list include_outbound_cidrs;
	struct ml_cidr_list exclude_outbound_cidrs;
	/* Connections with a local or remote port listed here are never
	 * spliced (operator opt-out for apps that need plain TCP). */
	struct ml_port_list exclude_splice_ports;
	char name[ML_POD_NAME_LEN]; /* for humans: pod name or netns path */
};

/* Identity of one established TCP socket: whose netns, and its 4-tuple as
 * seen from that socket. Ports in host byte order. */
struct ml_sock_key {
	__u64 netns;
	struct ml_addr local;
	struct ml_addr remote;
	__u16 local_port;
	__u16 remote_port;
	__u32 _pad;
};

/* An address and port inside a netns: the key of ml_listeners (a pod's
 * inbound listener by its address family and port). */
struct ml_endpoint {
	__u64 netns;
	struct ml_addr addr;
	__u16 port;
	__u16 _pad[3];
};

/* A connection as both of its ends see it across istio-init's REDIRECT:
 * the key of ml_active. The REDIRECT rewrites the destination, and the
 * source port too when its reply tuple clashes with a connection still in
 * conntrack (two ports of a pod both redirected to 15006, the same source
 * port reused), but never the source address or the sequence numbers. The
 * two initial sequence numbers make the key unique among live
 * connections from one address. */
struct ml_handshake {
	__u64 netns;         /* the active end's netns */
	struct ml_addr addr; /* the active end's address */
	__u32 active_seq;    /* the active end's ISN + 1 */
	__u32 passive_seq;   /* the passive end's ISN + 1 */
};

/* ml_sock_state.hold: why a direction takes TCP until nothing of it is left
 * on the TCP path (see splice.bpf.c). */
enum ml_sock_hold {
	ML_HOLD_NONE = 0,
	ML_HOLD_THROTTLED = 1,     /* backpressure: the reader fell behind */
	ML_HOLD_UNTIL_DRAINED = 2, /* bytes may have taken TCP before pairing */
};

/* ml_sock_state.flags */
enum ml_sock_flag {
	/* The socket registered its handshake in ml_active (a NAT may hide
	 * it from its passive end); cleared when that end consumed it. */
	ML_SOCK_IN_ACTIVE = 1 << 0,
	/* The passive end: its peer key is the active end's, whose remote
	 * endpoint names the connection's destination (ml_dest). */
	ML_SOCK_PASSIVE = 1 << 1,
};

/* Splicing's state of one socket in ml_socks, keyed by its ml_sock_key:
 * everything sk_msg needs for a message in one lookup. */
struct ml_sock_state {
	/* The socket its bytes go to; netns 0 until known (an active end
	 * behind a REDIRECT learns it when its passive end pairs). */
	struct ml_sock_key peer;
	__u64 addr;      /* this socket's kernel address */
	__u64 peer_addr; /* the peer's kernel address once paired, else 0 */
	__u8 hold;       /* enum ml_sock_hold */
	__u8 flags;      /* enum ml_sock_flag */
	__u8 _pad[2];
	/* With ML_SOCK_IN_ACTIVE: the sequence numbers of its ml_active key
	 * (struct ml_handshake), so close can remove the entry. */
	__u32 active_seq;
	__u32 passive_seq;
	/* Messages this end sent (sk_msg), counted up to
	 * ml_splice_min_messages only; the peer's count when that was higher
	 * and the peer closed first. */
	__u32 msgs;
};

/* Where a spliced connection went, as its active end connected: the key of
 * ml_dest_profile. */
struct ml_dest {
	__u64 netns;         /* the active end's netns */
	struct ml_addr addr; /* the active end's remote address */
	__u16 port;          /* its remote port, host byte order */
	__u16 _pad;
	__u32 _pad2;
};

/* What the last spliced connections to one destination carried. */
struct ml_dest_profile {
	/* Consecutive short connections (neither end sent
	 * ml_splice_min_messages messages), up to ML_SHORT_STREAK; one longer
	 * connection resets it (as soon as one of its ends sends its
	 * ml_splice_min_messages-th message). */
	__u32 short_streak;
	/* New connections seen while the streak is full (every
	 * ML_SHORT_PROBE_EVERY-th of them is spliced to learn again). */
	__u32 seen;
	/* bpf_ktime_get_ns() when the last short connection closed: a streak
	 * older than ML_SHORT_FRESH_NS no longer counts. */
	__u64 last_short_ns;
};

/* ml_orig_dst.flags */
enum ml_orig_flag {
	ML_ORIG_REDIRECTED = 1 << 0, /* outbound connect sent to the proxy */
	ML_ORIG_STEERED = 1 << 1,    /* inbound, assigned by sk_lookup */
	ML_ORIG_DNS = 1 << 2,        /* port 53 sent to the DNS proxy */
	ML_ORIG_IPV6 = 1 << 3,       /* the app used AF_INET6 */
	ML_ORIG_BYPASSED = 1 << 4,   /* outbound connect sent straight to an
				      * endpoint (bypass.h) */
	ML_ORIG_BYPASS_QUIET = 1 << 5, /* bypassed, and nothing else wants the
					* socket's state callbacks (its pod
					* does not splice app sockets): they
					* stop once its close is counted */
	ML_ORIG_BYPASS_COUNTED = 1 << 6, /* bypassed, its close is counted */
};

/* The destination an app asked for before meshlane rewrote it. */
struct ml_orig_dst {
	struct ml_addr addr;
	__u16 port;  /* host byte order */
	__u16 _pad;
	__u32 flags; /* enum ml_orig_flag */
	__u64 netns; /* the pod that made the connection */
};

/* The agent's bypass heartbeat: the kernel bypasses (outbound, and
 * inbound pass-through) only while now - heartbeat_ns <= grace_ns
 * (bpf_ktime_get_ns, CLOCK_MONOTONIC). 0 = never written: no bypass. */
struct ml_bypass_clock {
	__u64 heartbeat_ns;
	__u64 grace_ns;
};

/* (destination pod, port): one inbound port of one pod whose own inbound
 * config is plain pass-through (see ml_inbound_pass in maps.h). */
struct ml_inbound_key {
	__u64 netns; /* the destination pod's netns cookie */
	__u16 port;  /* host byte order, the port the flow arrives at */
	__u16 _pad[3];
};

/* Slots of the per-CPU counter array ml_counters. */
enum ml_counter {
	ML_CNT_MSG_SPLICED = 0,     /* sk_msg redirected to the peer socket */
	ML_CNT_BYTES_SPLICED,
	ML_CNT_MSG_FALLBACK,        /* sk_msg passed to the TCP stack */
	ML_CNT_BYTES_FALLBACK,
	ML_CNT_SOCK_INSERTED,       /* sockops put a socket in ml_socks */
	ML_CNT_SOCK_INSERT_FAILED,  /* ml_socks full (or key clash): normal path */
	ML_CNT_PAIRED_NAT,          /* sockets paired across a NAT redirect */
	ML_CNT_CONNECT_REDIRECTED,  /* connect sent to the proxy */
	ML_CNT_CONNECT_EXEMPT,      /* connect from a meshed pod left alone */
	ML_CNT_ORIG_DST_ANSWERED,   /* SO_ORIGINAL_DST answered by getsockopt */
	ML_CNT_INBOUND_STEERED,     /* sk_lookup assigned the inbound listener */
	ML_CNT_INBOUND_NO_LISTENER, /* steering wanted but no listener yet */
	ML_CNT_DNS_REDIRECTED,
	ML_CNT_LISTENER_REGISTERED, /* proxy inbound listener seen */
	ML_CNT_STATE_FULL,          /* per-connection state could not be kept
				     * (the connect fails, or the proxy gets
				     * no original destination) */
	ML_CNT_SPLICE_THROTTLED,    /* a direction handed to TCP: reader behind */
	ML_CNT_SPLICE_RESUMED,      /* a throttled direction spliced again */
	ML_CNT_SOCK_NOT_SPLICED,    /* a meshed socket kept out of ml_socks (app
				     * socket, opted out, or no local peer) */
	ML_CNT_SOCK_EVICTED,        /* an active end removed from ml_socks: its
				     * passive end may not be spliced */
	ML_CNT_OVERLAP_TRIMMED,     /* verdict: a segment's already-delivered
				     * head cut off (overlapping retransmission) */
	ML_CNT_OVERLAP_BYTES,       /* bytes cut off by those trims */
	ML_CNT_OVERLAP_UNTRIMMED,   /* verdict: an overlap it could not cut */
	ML_CNT_DISCONNECT_PURGED,   /* a socket left ml_socks at disconnect:
				     * unread spliced bytes dropped like TCP's */
	ML_CNT_INBOUND_PASSTHROUGH, /* sk_lookup let a connection reach the
				     * app's own listener: its pod's inbound
				     * config for the port is pass-through
				     * (ml_inbound_pass) */
	ML_CNT_SPLICE_SHORT_SKIPPED, /* an active end kept out of ml_socks:
				      * its destination's connections are
				      * short (ml_dest_profile) */
	ML_CNT__MAX,
};

/* Room for counters added later without a layout change. */
#define ML_COUNTER_SLOTS 32

#endif /* MESHLANE_H */
