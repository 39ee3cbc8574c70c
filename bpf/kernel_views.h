/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The meshlane authors */
/*
 * kernel_views.h - minimal CO-RE views of the kernel structs the programs
 * read (no vmlinux.h). Only the fields used are declared; libbpf relocates
 * each access to the field's offset in the running kernel's BTF (the
 * ___ml suffix is a CO-RE flavour: it matches the kernel type of the name
 * before it). One set for every object, so a program that carries both
 * features' code (intercept.bpf.c's ml_sockops) sees one definition.
 */
#ifndef MESHLANE_KERNEL_VIEWS_H
#define MESHLANE_KERNEL_VIEWS_H

#include <linux/types.h>

typedef struct {
	__u32 val;
} kuid_t___ml;

typedef struct {
	__u32 val;
} kgid_t___ml;

/* The credentials iptables' owner match reads (fsuid/fsgid). */
struct cred___ml {
	kuid_t___ml fsuid;
	kgid_t___ml fsgid;
} __attribute__((preserve_access_index));

struct file___ml {
	const struct cred___ml *f_cred;
} __attribute__((preserve_access_index));

struct socket___ml {
	struct file___ml *file;
} __attribute__((preserve_access_index));

struct sock___ml {
	void *sk_user_data;               /* the psock (flags in the low bits) */
	kuid_t___ml sk_uid;               /* the owner as iptables sees it */
	int sk_err;
	struct socket___ml *sk_socket;
} __attribute__((preserve_access_index));

struct task_struct___ml {
	const struct cred___ml *cred;
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

/* The head of struct tcp_skb_cb, which TCP keeps in skb->cb. */
struct sk_buff___ml {
	char cb[48];
} __attribute__((preserve_access_index));

#endif /* MESHLANE_KERNEL_VIEWS_H */
