//! The throwaway BPF objects of the behaviour probes: three tiny programs
//! written as raw instructions (no object file, no BTF), socket maps, and
//! attaching and inserting. Every object is an [`OwnedFd`]; closing the
//! last fd of a map detaches its programs and releases its sockets.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use libbpf_sys::{bpf_attach_type, bpf_insn, bpf_map_type, bpf_prog_type};

const R0: u8 = 0;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
/// SK_PASS for sk_msg and sk_skb programs.
const SK_PASS: i32 = 1;

/// An error from a libbpf low-level call (which returns `-errno`), naming
/// what failed and keeping the errno's kind.
fn bpf_error(rc: i32, what: &str) -> io::Error {
    let e = io::Error::from_raw_os_error(-rc);
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Takes ownership of a new fd returned by libbpf, or turns its `-errno`
/// into an error.
fn owned_fd(rc: i32, what: &str) -> io::Result<OwnedFd> {
    if rc < 0 {
        return Err(bpf_error(rc, what));
    }
    // SAFETY: a non-negative return is a fresh fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc) })
}

fn insn(code: u32, dst: u8, src: u8, imm: i32) -> bpf_insn {
    bpf_insn {
        code: code as u8,
        _bitfield_align_1: [],
        _bitfield_1: bpf_insn::new_bitfield_1(dst, src),
        off: 0,
        imm,
    }
}

/// `dst = imm` (64-bit move of a sign-extended 32-bit immediate).
fn mov64_imm(dst: u8, imm: i32) -> bpf_insn {
    insn(
        libbpf_sys::BPF_ALU64 | libbpf_sys::BPF_MOV | libbpf_sys::BPF_K,
        dst,
        0,
        imm,
    )
}

/// `dst = map` as the two-instruction 64-bit load the verifier rewrites
/// into the map's address (src_reg BPF_PSEUDO_MAP_FD marks imm as an fd).
fn ld_map_fd(dst: u8, map: BorrowedFd<'_>) -> [bpf_insn; 2] {
    let code = libbpf_sys::BPF_LD | libbpf_sys::BPF_DW | libbpf_sys::BPF_IMM;
    let pseudo = libbpf_sys::BPF_PSEUDO_MAP_FD as u8;
    [insn(code, dst, pseudo, map.as_raw_fd()), insn(0, 0, 0, 0)]
}

fn call(helper: libbpf_sys::bpf_func_id) -> bpf_insn {
    insn(
        libbpf_sys::BPF_JMP | libbpf_sys::BPF_CALL,
        0,
        0,
        helper as i32,
    )
}

fn exit() -> bpf_insn {
    insn(libbpf_sys::BPF_JMP | libbpf_sys::BPF_EXIT, 0, 0, 0)
}

fn load(ty: bpf_prog_type, insns: &[bpf_insn], what: &str) -> io::Result<OwnedFd> {
    // SAFETY: `insns` is a live slice whose length is passed; NULL opts.
    let rc = unsafe {
        libbpf_sys::bpf_prog_load(
            ty,
            c"ml_probe".as_ptr(),
            c"GPL".as_ptr(),
            insns.as_ptr(),
            insns.len() as libbpf_sys::size_t,
            std::ptr::null_mut(),
        )
    };
    owned_fd(rc, what)
}

/// An sk_msg program that passes every message (`r0 = SK_PASS; exit`).
pub(crate) fn pass_msg_prog() -> io::Result<OwnedFd> {
    let insns = [mov64_imm(R0, SK_PASS), exit()];
    load(
        libbpf_sys::BPF_PROG_TYPE_SK_MSG,
        &insns,
        "loading a pass sk_msg program",
    )
}

/// An sk_skb program that passes every skb: as a stream verdict it makes
/// the socket's data_ready hand whole skbs to the psock.
pub(crate) fn pass_verdict_prog() -> io::Result<OwnedFd> {
    let insns = [mov64_imm(R0, SK_PASS), exit()];
    load(
        libbpf_sys::BPF_PROG_TYPE_SK_SKB,
        &insns,
        "loading a pass sk_skb program",
    )
}

/// An sk_msg program that redirects every message to the ingress of the
/// socket in slot 0 of the SOCKMAP `target`:
/// `bpf_msg_redirect_map(ctx, target, 0, BPF_F_INGRESS)`. r1 already holds
/// the context; the helper's SK_PASS/SK_DROP is the verdict. The program
/// holds a reference to `target`.
pub(crate) fn redirect_ingress_prog(target: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let [ld_lo, ld_hi] = ld_map_fd(R2, target);
    let insns = [
        ld_lo,
        ld_hi,
        mov64_imm(R3, 0),
        mov64_imm(R4, libbpf_sys::BPF_F_INGRESS as i32),
        call(libbpf_sys::BPF_FUNC_msg_redirect_map),
        exit(),
    ];
    load(
        libbpf_sys::BPF_PROG_TYPE_SK_MSG,
        &insns,
        "loading a redirecting sk_msg program",
    )
}

fn socket_map(ty: bpf_map_type, slots: u32, what: &str) -> io::Result<OwnedFd> {
    // SAFETY: plain map creation, NULL opts.
    let rc = unsafe {
        libbpf_sys::bpf_map_create(ty, c"ml_probe".as_ptr(), 4, 8, slots, std::ptr::null())
    };
    owned_fd(rc, what)
}

/// A SOCKHASH with u32 keys and room for `slots` sockets.
pub(crate) fn sockhash(slots: u32) -> io::Result<OwnedFd> {
    socket_map(
        libbpf_sys::BPF_MAP_TYPE_SOCKHASH,
        slots,
        "creating a sockhash",
    )
}

/// A SOCKMAP (an array of sockets) of `slots` entries.
pub(crate) fn sockmap(slots: u32) -> io::Result<OwnedFd> {
    socket_map(
        libbpf_sys::BPF_MAP_TYPE_SOCKMAP,
        slots,
        "creating a sockmap",
    )
}

/// Attaches `prog` to `map`; the map keeps its own reference, so `prog`
/// may be closed afterwards. Sockets take the map's programs when they
/// are inserted: attach first.
pub(crate) fn attach(
    prog: BorrowedFd<'_>,
    map: BorrowedFd<'_>,
    ty: bpf_attach_type,
) -> io::Result<()> {
    // SAFETY: two fds we borrow, no flags.
    let rc = unsafe { libbpf_sys::bpf_prog_attach(prog.as_raw_fd(), map.as_raw_fd(), ty, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(bpf_error(rc, "attaching a program to a socket map"))
    }
}

/// Inserts an established TCP socket into `map` at `key` (the value is the
/// socket's fd). The socket gets a psock and tcp_bpf's proto.
/// Attaches `prog` to `map` through a new bpf_link (Linux 6.10+ for socket
/// maps); dropping the link detaches it.
pub(crate) fn link(
    prog: BorrowedFd<'_>,
    map: BorrowedFd<'_>,
    ty: bpf_attach_type,
) -> io::Result<OwnedFd> {
    // SAFETY: two live fds; NULL opts.
    let rc = unsafe {
        libbpf_sys::bpf_link_create(prog.as_raw_fd(), map.as_raw_fd(), ty, std::ptr::null())
    };
    owned_fd(rc, "bpf_link_create")
}

pub(crate) fn insert(map: BorrowedFd<'_>, key: u32, sock: BorrowedFd<'_>) -> io::Result<()> {
    let value = sock.as_raw_fd() as u64;
    // SAFETY: key and value point at locals of the map's key and value sizes.
    let rc = unsafe {
        libbpf_sys::bpf_map_update_elem(
            map.as_raw_fd(),
            (&key as *const u32).cast(),
            (&value as *const u64).cast(),
            u64::from(libbpf_sys::BPF_ANY),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(bpf_error(rc, "inserting a socket into a socket map"))
    }
}
