// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Copyright (c) 2026 The meshlane authors */
/*
 * chaos.bpf.c - provoked packet loss and overlapping retransmissions for the
 * integrity soak; never part of an install (src/sim/chaos.rs loads it on its
 * own, not through the loader, and shares no map with the data path).
 *
 * Programs:
 *   ml_chaos_drop     (tc, clsact ingress of a pod's eth0; egress works too)
 *                     drops about one in ml_chaos_one_in TCP packets that
 *                     carry payload, IPv4 and IPv6, and passes everything
 *                     else (on to the next filter, if any): pure ACKs, SYNs
 *                     and FINs without data, other protocols.
 *   ml_chaos_overlap  (tc, clsact ingress of a pod's eth0) turns about one in
 *                     ml_chaos_one_in payload packets into an overlapping
 *                     retransmission: the packet goes on trimmed to its
 *                     first 1..min(n-1, 1400) payload bytes, and a clone of
 *                     the whole packet re-enters the interface's ingress
 *                     after it, so the receiver gets a segment whose head it
 *                     already has and whose tail is new. Nothing is lost or
 *                     changed: the clone carries every byte of the original.
 *
 * Why. The soak wants many segments that overlap bytes the receiver already
 * has. Loss was meant to make them (a retransmission that the sender
 * re-segmented or collapsed overlaps what the receiver holds), but with
 * SACK the sender retransmits exactly the holes, so loss alone makes almost
 * none; ml_chaos_overlap makes them directly.
 *
 * Where ml_chaos_drop sits. On egress the drop is local: the sender's stack
 * gets NET_XMIT_DROP back, TCP keeps the segment unsent, enters CWR and
 * sends it again as new data, so almost nothing is retransmitted. On the
 * receiving pod's ingress the packet is gone after the sender let go of it:
 * real loss. Offsets are from the Ethernet header either way (cls_bpf
 * pushes it back on ingress).
 *
 * Unit. On a veth with TSO/GSO one packet here can be a GSO packet of
 * several MSS-sized segments; the choice is made per packet, and
 * ml_chaos_stats counts both packets and the segments they carried.
 */

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Act on about one in this many payload packets; 0 on none.
 * Writer: src/sim/chaos.rs before load. Readers: both programs. */
const volatile __u32 ml_chaos_one_in = 0;

/* skb->mark of the clone ml_chaos_overlap sends back into ingress, so it
 * passes untouched (and unmarked) the second time. A packet that crossed
 * into the pod's netns arrives with mark 0 (scrubbed), so no other user. */
#define ML_CHAOS_MARK 0x6d6c6f76 /* "mlov" */

/* Pass a packet on: TC_ACT_UNSPEC lets the next filter on the hook (another
 * chaos program) see it, and with none left the packet goes on as with
 * TC_ACT_OK, which would end the hook's filter list here. */
#define ML_CHAOS_PASS TC_ACT_UNSPEC

/* The largest head kept by ml_chaos_overlap: the trimmed packet must fit
 * the interface's MTU (the trim also undoes GSO). */
#define ML_CHAOS_MAX_HEAD 1400

/* Slots of ml_chaos_stats. */
enum ml_chaos_stat {
	ML_CHAOS_SEEN = 0,	   /* payload packets looked at */
	ML_CHAOS_DROPPED = 1,	   /* ml_chaos_drop: packets dropped */
	ML_CHAOS_SEGS_DROPPED = 2, /* ml_chaos_drop: TCP segments in them */
	ML_CHAOS_OVERLAPS = 3,	   /* ml_chaos_overlap: overlaps made */
	ML_CHAOS_FAILED = 4,	   /* ml_chaos_overlap: a helper refused */
	ML_CHAOS_NSTATS = 5,
};

/* Counters, one u64 per enum ml_chaos_stat slot; one map per loaded object,
 * so per attached program.
 * Writers: ml_chaos_drop, ml_chaos_overlap. Reader: src/sim/chaos.rs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ML_CHAOS_NSTATS);
	__type(key, __u32);
	__type(value, __u64);
} ml_chaos_stats SEC(".maps");

/* Where a TCP packet's parts are. Offsets are from the Ethernet header. */
struct ml_tcp_seg {
	__u32 l4;	/* TCP header */
	__u32 ip_hlen;	/* IPv4: header length; IPv6: 40 */
	__u32 tcp_hlen;
	__u32 ip_len;	/* IPv4 tot_len / IPv6 payload_len; 0 on BIG TCP */
	__u32 payload;	/* payload bytes */
	__u8 v6;
	__u8 ends;	/* SYN, FIN, RST or URG: not one to cut in two */
};

static __always_inline void count(__u32 slot, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&ml_chaos_stats, &slot);

	if (v)
		__sync_fetch_and_add(v, n);
}

/* Reads the IPv4 header at `l3` into `s`; 0 when it heads a whole TCP
 * segment. */
static __always_inline int parse_ipv4(struct __sk_buff *skb, __u32 l3,
				      struct ml_tcp_seg *s)
{
	struct iphdr ip;

	if (bpf_skb_load_bytes(skb, l3, &ip, sizeof(ip)))
		return -1;
	if (ip.protocol != IPPROTO_TCP)
		return -1;
	/* A fragment's offset or more-fragments bit: not a whole segment. */
	if (ip.frag_off & bpf_htons(0x3fff))
		return -1;
	s->ip_hlen = (__u32)ip.ihl * 4;
	if (s->ip_hlen < sizeof(ip))
		return -1;
	s->ip_len = bpf_ntohs(ip.tot_len);
	s->v6 = 0;
	return 0;
}

/* Reads the IPv6 header at `l3` into `s`; 0 when the next header is TCP
 * (extension headers are not followed: the pods send none). */
static __always_inline int parse_ipv6(struct __sk_buff *skb, __u32 l3,
				      struct ml_tcp_seg *s)
{
	struct ipv6hdr ip6;

	if (bpf_skb_load_bytes(skb, l3, &ip6, sizeof(ip6)))
		return -1;
	if (ip6.nexthdr != IPPROTO_TCP)
		return -1;
	s->ip_hlen = sizeof(ip6);
	s->ip_len = bpf_ntohs(ip6.payload_len);
	s->v6 = 1;
	return 0;
}

/* Fills `s` for a TCP packet; returns its payload bytes, 0 for any other
 * packet or one without payload. */
static __always_inline __u32 parse_seg(struct __sk_buff *skb,
				       struct ml_tcp_seg *s)
{
	struct tcphdr tcp;
	__u32 l3 = ETH_HLEN, len;
	int err;

	if (skb->protocol == bpf_htons(ETH_P_IP))
		err = parse_ipv4(skb, l3, s);
	else if (skb->protocol == bpf_htons(ETH_P_IPV6))
		err = parse_ipv6(skb, l3, s);
	else
		return 0;
	if (err)
		return 0;
	s->l4 = l3 + s->ip_hlen;
	if (bpf_skb_load_bytes(skb, s->l4, &tcp, sizeof(tcp)))
		return 0;
	s->tcp_hlen = (__u32)tcp.doff * 4;
	s->ends = tcp.syn || tcp.fin || tcp.rst || tcp.urg;
	/* Bytes from the TCP header on; the skb length on BIG TCP. */
	if (s->ip_len == 0)
		len = skb->len - s->l4;
	else if (s->v6)
		len = s->ip_len;
	else if (s->ip_len > s->ip_hlen)
		len = s->ip_len - s->ip_hlen;
	else
		return 0;
	if (len <= s->tcp_hlen)
		return 0;
	s->payload = len - s->tcp_hlen;
	return s->payload;
}

/* True about once in ml_chaos_one_in calls. */
static __always_inline int chosen(void)
{
	__u32 one_in = ml_chaos_one_in;

	return one_in != 0 && bpf_get_prandom_u32() % one_in == 0;
}

SEC("tc")
int ml_chaos_drop(struct __sk_buff *skb)
{
	struct ml_tcp_seg s = {};

	if (parse_seg(skb, &s) == 0)
		return ML_CHAOS_PASS;
	count(ML_CHAOS_SEEN, 1);
	if (!chosen())
		return ML_CHAOS_PASS;
	count(ML_CHAOS_DROPPED, 1);
	count(ML_CHAOS_SEGS_DROPPED, skb->gso_segs > 1 ? skb->gso_segs : 1);
	return TC_ACT_SHOT;
}

/* Cuts the packet `s` describes to its first `keep` payload bytes and
 * fixes the IP length, the IPv4 header checksum and the TCP pseudo-header
 * sum (the only part of the TCP checksum a CHECKSUM_PARTIAL packet, which
 * is what veth carries, holds). */
static __always_inline int trim(struct __sk_buff *skb,
				const struct ml_tcp_seg *s, __u32 keep)
{
	__u32 tcp_old = s->tcp_hlen + s->payload, tcp_new = s->tcp_hlen + keep;
	__u32 ip_new = s->v6 ? tcp_new : s->ip_hlen + tcp_new;
	__be16 old_len = bpf_htons(s->ip_len), new_len = bpf_htons(ip_new);
	__u32 len_off = ETH_HLEN + (s->v6 ? 4 : 2);

	if (bpf_skb_change_tail(skb, s->l4 + tcp_new, 0))
		return -1;
	if (bpf_skb_store_bytes(skb, len_off, &new_len, sizeof(new_len), 0))
		return -1;
	if (!s->v6 && bpf_l3_csum_replace(skb, ETH_HLEN + 10, old_len, new_len,
					   sizeof(__u16)))
		return -1;
	return bpf_l4_csum_replace(skb, s->l4 + 16, bpf_htonl(tcp_old),
				   bpf_htonl(tcp_new),
				   BPF_F_PSEUDO_HDR | sizeof(__u32));
}

SEC("tc")
int ml_chaos_overlap(struct __sk_buff *skb)
{
	struct ml_tcp_seg s = {};
	__u32 keep;

	if (skb->mark == ML_CHAOS_MARK) {
		skb->mark = 0;
		return ML_CHAOS_PASS;
	}
	/* BIG TCP (no length in the header) is left alone, and so is a
	 * segment whose flags would apply to the trimmed head. */
	if (parse_seg(skb, &s) < 2 || s.ip_len == 0 || s.ends)
		return ML_CHAOS_PASS;
	count(ML_CHAOS_SEEN, 1);
	if (!chosen())
		return ML_CHAOS_PASS;
	keep = s.payload - 1;
	if (keep > ML_CHAOS_MAX_HEAD)
		keep = ML_CHAOS_MAX_HEAD;
	keep = 1 + bpf_get_prandom_u32() % keep;
	/* The clone is the whole packet; it is queued to the backlog and so
	 * reaches TCP after this, the trimmed, packet. */
	skb->mark = ML_CHAOS_MARK;
	if (bpf_clone_redirect(skb, skb->ifindex, BPF_F_INGRESS)) {
		skb->mark = 0;
		count(ML_CHAOS_FAILED, 1);
		return ML_CHAOS_PASS;
	}
	skb->mark = 0;
	/* If the trim fails half-way the packet is dropped: the clone still
	 * carries all of it. */
	if (trim(skb, &s, keep)) {
		count(ML_CHAOS_FAILED, 1);
		return TC_ACT_SHOT;
	}
	count(ML_CHAOS_OVERLAPS, 1);
	return ML_CHAOS_PASS;
}
