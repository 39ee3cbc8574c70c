//! Loading the BPF objects and attaching them, following the skeleton idiom
//! (open -> size maps, set pin paths -> load -> attach -> pin), and adopting
//! what an earlier agent pinned: an existing link gets the new program
//! swapped in atomically (bpf_link_update) instead of a second attachment.

use std::fs::File;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{AsRawLibbpf, Link, OpenObject, Program};
use serde::Serialize;
use thiserror::Error;

use super::layout::{LayoutError, PinLayout, PinRootLock, LAYOUT_VERSION};
use super::names::{LinkId, MapId};
use super::{links, lru, maps};
use crate::cgroup::{self, CgroupError};
use crate::integrity::{self, Finding, KernelFacts, Plan, PolicyError};
use crate::overlap::OverlapKind;
use crate::probe;
use crate::skel::inbound::{InboundSkel, InboundSkelBuilder};
use crate::skel::intercept::InterceptSkelBuilder;
use crate::skel::splice::SpliceSkelBuilder;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Probe(#[from] probe::ProbeError),
    #[error("probing how this kernel's sockhash sockets behave: {0}")]
    KernelProbe(std::io::Error),
    #[error(transparent)]
    Integrity(#[from] PolicyError),
    #[error("{what}: {source}")]
    Bpf {
        what: String,
        source: libbpf_rs::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Map(#[from] maps::MapError),
    #[error("the BPF objects have a map {0} that datapath::names does not name (a build mistake: add it there)")]
    UnnamedMap(String),
    #[error("object layout v{found} does not match this build's v{LAYOUT_VERSION}")]
    LayoutMismatch { found: u32 },
    #[error("pin root {root} is installed on cgroup {pinned}, not {asked}: pass --cgroup {pinned}, or run `meshlane uninstall` first")]
    OtherCgroup {
        root: PathBuf,
        pinned: String,
        asked: PathBuf,
    },
    #[error("splice-only install asked, but interception is installed ({link}); pods may rely on it: run `meshlane uninstall` first")]
    InterceptInstalled { link: PathBuf },
    #[error("pinned map {map} has room for {pinned} entries, but sockhash size {sockhash_size} sizes it {wanted} on this machine: use the --sockhash-size it was installed with, or run `meshlane uninstall` first")]
    PinnedSize {
        map: String,
        pinned: u32,
        wanted: u32,
        sockhash_size: u32,
    },
}

fn bpf(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> LoadError {
    let what = what.into();
    move |source| LoadError::Bpf { what, source }
}

pub use crate::integrity::VerdictRemedy;

/// What the agent installs.
#[derive(Debug, Clone)]
pub struct Config {
    pub pin_root: PathBuf,
    /// cgroup v2 directory to attach to; None = the hierarchy's root.
    pub cgroup: Option<PathBuf>,
    /// Capacity of ml_socks (and of the bookkeeping maps sized with it).
    pub sockhash_size: u32,
    /// Bytes queued at a spliced reader before that direction goes back to
    /// TCP until it drains (0 = no limit; see bpf/splice.bpf.c).
    pub splice_queue_limit: u32,
    /// A connection neither of whose ends sent this many messages is short;
    /// a destination whose recent spliced connections were all short is no
    /// longer spliced, but for a probe now and then (0: splice every
    /// connection; see bpf/splice_sockops.h).
    pub splice_min_messages: u32,
    /// Attach the interception hooks (connect, getsockopt, getpeername, DNS).
    pub intercept: bool,
    pub verdict_remedy: VerdictRemedy,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            pin_root: crate::layout::DEFAULT_PIN_ROOT.into(),
            cgroup: None,
            sockhash_size: 65536,
            splice_queue_limit: default_splice_queue_limit(),
            splice_min_messages: DEFAULT_SPLICE_MIN_MESSAGES,
            intercept: true,
            verdict_remedy: VerdictRemedy::Auto,
        }
    }
}

/// How one program ended up attached.
#[derive(Debug, Clone, Serialize)]
pub struct Attachment {
    pub program: String,
    pub pin: PathBuf,
    /// "attached" (new link), "adopted" (pinned link, program replaced).
    pub action: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    pub pin_root: PathBuf,
    pub cgroup: PathBuf,
    pub attachments: Vec<Attachment>,
    pub verdict_remedy: bool,
    /// Byte integrity: what the data path does about each kernel behaviour.
    pub plan: Plan,
    pub integrity: Vec<Finding>,
}

/// What the probes measure, plus whether meshlane's own stream verdict
/// passes overlapping retransmissions exactly once here: it is loaded with
/// private maps (nothing pinned) and run through the overlap experiments.
/// Overrides named in [`integrity::PROBE_FAULT_ENV`] are applied (and
/// logged); [`measured_kernel_facts`] is what the kernel said.
pub fn kernel_facts() -> std::io::Result<KernelFacts> {
    let mut facts = measured_kernel_facts()?;
    if let Ok(spec) = std::env::var(integrity::PROBE_FAULT_ENV) {
        let applied = facts
            .apply_faults(&spec)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        for line in applied {
            tracing::warn!("{line}");
        }
    }
    Ok(facts)
}

/// The experiments' results, never overridden.
pub fn measured_kernel_facts() -> std::io::Result<KernelFacts> {
    let behaviour = probe::kernel_behaviour()?;
    Ok(KernelFacts {
        behaviour,
        verdict_trims_overlaps: verdict_trims_overlaps(),
    })
}

fn verdict_trims_overlaps() -> bool {
    let mut obj = MaybeUninit::uninit();
    let Ok(open) = SpliceSkelBuilder::default().open(&mut obj) else {
        return false;
    };
    let Ok(skel) = open.load() else {
        return false;
    };
    let verdict = skel.progs.ml_splice_verdict.as_fd();
    [
        OverlapKind::Prefix {
            old: 2896,
            new: 1448,
        },
        OverlapKind::OutOfOrder {
            old: 1448,
            new: 2896,
        },
    ]
    .into_iter()
    .all(|kind| matches!(probe::overlap_extra_bytes(Some(verdict), kind), Ok(0)))
}

/// Default of `Config::splice_min_messages`. On the benchmark's machine a
/// connection's psock pair cost about 30 µs and splicing one small
/// exchange won back a few µs at most (docs/benchmarks.md, "Short
/// connections are not spliced"): the break-even is some ten exchanges,
/// and 8 errs towards splicing.
pub const DEFAULT_SPLICE_MIN_MESSAGES: u32 = 8;

/// Default of `Config::splice_queue_limit`: a quarter of the largest receive
/// buffer autotuning may grow to (the third field of net.ipv4.tcp_rmem; 6 MiB,
/// the kernel's default, if unreadable). The spliced queue is charged to the
/// reader's socket like its TCP receive queue, so a direction handed to TCP
/// needs room left in that buffer: at the whole of it, a hand-over overran
/// the buffer (segments pruned and dropped, the sender waiting out a
/// retransmission timeout) and a bulk round fell from 11 to 4-5 Gbit/s; a
/// quarter leaves the TCP phase three quarters.
pub fn default_splice_queue_limit() -> u32 {
    let rcvbuf_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse::<u32>().ok())
        .filter(|v| *v > 0)
        .unwrap_or(6 << 20);
    (rcvbuf_max / 4).max(1)
}

/// Gives every shared map its pin path (so libbpf reuses or pins it) and the
/// configured size.
fn prepare_maps(obj: &mut OpenObject, layout: &PinLayout, size: u32) -> Result<(), LoadError> {
    for mut m in obj.maps_mut() {
        let name = m.name().to_string_lossy().into_owned();
        if !name.starts_with("ml_") {
            continue; // .rodata and friends stay private to the object
        }
        let id = MapId::from_pin_name(&name).ok_or(LoadError::UnnamedMap(name))?;
        if let Some(entries) = lru::install_capacity(id, size, lru::possible_cpus()) {
            m.set_max_entries(entries)
                .map_err(bpf(format!("sizing {id}")))?;
        }
        m.set_pin_path(layout.map(id))
            .map_err(bpf(format!("pin path of {id}")))?;
    }
    Ok(())
}

/// The cgroup id of a cgroup v2 directory (its inode number).
fn cgroup_id(path: &Path) -> Result<u64, LoadError> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|e| LoadError::Io {
            path: path.into(),
            source: e,
        })
}

/// The cgroup a pinned cgroup link is attached to (None: not pinned, not a
/// cgroup link, or its cgroup is gone).
fn pinned_link_cgroup(pin: &Path) -> Option<u64> {
    let fd = links::obj_get(pin)?;
    let li = links::link_info(fd.as_fd())?;
    if li.type_ != libbpf_sys::BPF_LINK_TYPE_CGROUP {
        return None;
    }
    // SAFETY: the cgroup member is the one the kernel fills for cgroup links.
    let id = unsafe { li.__bindgen_anon_1.cgroup.cgroup_id };
    (id != 0).then_some(id)
}

/// The directory under the cgroup v2 mount whose cgroup id is `id`.
fn find_cgroup(id: u64) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut todo = vec![cgroup::cgroup2_mount().ok()?];
    while let Some(dir) = todo.pop() {
        if std::fs::symlink_metadata(&dir).ok()?.ino() == id {
            return Some(dir);
        }
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            }
        }
    }
    None
}

/// Adopting links that sit on another cgroup would report success while
/// the asked cgroup stays bare.
fn check_same_cgroup(layout: &PinLayout, cg_path: &Path) -> Result<(), LoadError> {
    let Some(pinned) = pinned_link_cgroup(&layout.link(LinkId::Sockops)) else {
        return Ok(());
    };
    if pinned == cgroup_id(cg_path)? {
        return Ok(());
    }
    Err(LoadError::OtherCgroup {
        root: layout.root().into(),
        pinned: find_cgroup(pinned)
            .map_or_else(|| format!("id {pinned}"), |p| p.display().to_string()),
        asked: cg_path.into(),
    })
}

/// A pinned map sized by `sockhash_size` must keep its size: libbpf would
/// refuse to reuse it anyway, with less to say about why.
fn check_pinned_sizes(layout: &PinLayout, size: u32) -> Result<(), LoadError> {
    let cpus = lru::possible_cpus();
    for id in MapId::ALL {
        let Some(wanted) = lru::install_capacity(id, size, cpus) else {
            continue;
        };
        match maps::pinned_capacity(layout, id)? {
            Some(pinned) if pinned != wanted => {
                return Err(LoadError::PinnedSize {
                    map: id.pin_name().into(),
                    pinned,
                    wanted,
                    sockhash_size: size,
                })
            }
            _ => {}
        }
    }
    Ok(())
}

fn load_err(obj: &str, e: libbpf_rs::Error) -> LoadError {
    LoadError::Bpf {
        what: format!(
            "loading {obj}.bpf.o (a pinned map of a different size or type needs `meshlane uninstall` first; RUST_LOG=libbpf=debug shows libbpf's log)"
        ),
        source: e,
    }
}

/// Pins a fresh link, or swaps `prog` into the link already pinned at `pin`.
fn attach_or_adopt(
    pin: &Path,
    prog: &Program<'_>,
    attach: impl FnOnce() -> Result<Link, LoadError>,
) -> Result<Attachment, LoadError> {
    let program = prog.name().to_string_lossy().into_owned();
    if pin.exists() {
        match Link::open(pin).and_then(|mut l| l.update_prog(prog)) {
            Ok(()) => {
                return Ok(Attachment {
                    program,
                    pin: pin.into(),
                    action: "adopted",
                })
            }
            Err(e) => {
                tracing::warn!(pin = %pin.display(), error = %e, "pinned link unusable, attaching anew");
                let _ = std::fs::remove_file(pin);
            }
        }
    }
    let mut link = attach()?;
    link.pin(pin)
        .map_err(bpf(format!("pinning {}", pin.display())))?;
    Ok(Attachment {
        program,
        pin: pin.into(),
        action: "attached",
    })
}

/// Attaches a program of ml_socks (sk_msg, stream verdict) and pins the
/// attachment at `pin`: a bpf_link where the kernel has them for socket
/// maps (6.10+); before that the program is attached to the map itself,
/// where it stays while the pinned map lives (replacing the program of
/// its type attached before), and the program is pinned at `pin`.
fn attach_to_socks(pin: &Path, prog: &Program<'_>, socks_fd: i32) -> Result<Attachment, LoadError> {
    if probe::sockmap_links() {
        return attach_or_adopt(pin, prog, || attach_sockmap_link(prog, socks_fd));
    }
    let program = prog.name().to_string_lossy().into_owned();
    let fd = prog.as_fd().as_raw_fd();
    // SAFETY: a loaded program's libbpf object.
    let ty =
        unsafe { libbpf_sys::bpf_program__expected_attach_type(prog.as_libbpf_object().as_ptr()) };
    // SAFETY: a program fd and a map fd, both live.
    let rc = unsafe { libbpf_sys::bpf_prog_attach(fd, socks_fd, ty, 0) };
    let io_err = |what: String, rc: i32| LoadError::Bpf {
        what,
        source: libbpf_rs::Error::from(std::io::Error::from_raw_os_error(-rc)),
    };
    if rc < 0 {
        return Err(io_err(format!("attaching {program} to ml_socks"), rc));
    }
    let adopted = pin.exists();
    let _ = std::fs::remove_file(pin);
    let c_pin = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes())
        .map_err(|_| io_err(format!("pinning {}", pin.display()), -libc::EINVAL))?;
    // SAFETY: a live program fd and a valid C string.
    let rc = unsafe { libbpf_sys::bpf_obj_pin(fd, c_pin.as_ptr()) };
    if rc < 0 {
        return Err(io_err(format!("pinning {}", pin.display()), rc));
    }
    Ok(Attachment {
        program,
        pin: pin.into(),
        action: if adopted { "adopted" } else { "attached" },
    })
}

/// Takes the program pinned at `pin` off ml_socks (a program attached to
/// the map; a pinned link goes with its pin) and removes the pin.
fn detach_from_socks(pin: &Path, socks_fd: i32, ty: libbpf_sys::bpf_attach_type) {
    if let Ok(c) = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes()) {
        // SAFETY: valid C string.
        let fd = unsafe { libbpf_sys::bpf_obj_get(c.as_ptr()) };
        if fd >= 0 {
            // SAFETY: fd is ours; a link fd makes the detach fail harmlessly.
            unsafe {
                libbpf_sys::bpf_prog_detach2(fd, socks_fd, ty);
                libc::close(fd);
            }
        }
    }
    let _ = std::fs::remove_file(pin);
}

/// bpf_link for a sockmap program (kernel 6.10+).
fn attach_sockmap_link(prog: &Program<'_>, map_fd: i32) -> Result<Link, LoadError> {
    // SAFETY: valid program pointer from a loaded object and a map fd.
    let ptr = unsafe {
        libbpf_sys::bpf_program__attach_sockmap(prog.as_libbpf_object().as_ptr(), map_fd)
    };
    let err = -unsafe { libbpf_sys::libbpf_get_error(ptr as *const _) } as i32;
    match NonNull::new(ptr) {
        Some(p) if err == 0 => Ok(unsafe { Link::from_ptr(p) }),
        _ => Err(LoadError::Bpf {
            what: format!("attaching {} to ml_socks", prog.name().to_string_lossy()),
            source: libbpf_rs::Error::from(std::io::Error::from_raw_os_error(err.max(1))),
        }),
    }
}

fn open_dir(path: &Path) -> Result<File, LoadError> {
    File::open(path).map_err(|e| LoadError::Io {
        path: path.into(),
        source: e,
    })
}

/// Installs (or adopts) the data path, holding the pin root for the
/// install's duration (see `install_holding`).
pub fn install(cfg: &Config) -> Result<InstallReport, LoadError> {
    let layout = PinLayout::new(&cfg.pin_root);
    layout.check_bpffs()?;
    layout.check_version()?;
    attach_cgroup(cfg)?;
    let lock = layout.lock()?;
    install_holding(cfg, &lock)
}

/// The cgroup v2 directory the programs attach to (checked), so a bad one
/// is refused before anything is created.
pub fn attach_cgroup(cfg: &Config) -> Result<PathBuf, LoadError> {
    let cg_path = match &cfg.cgroup {
        Some(p) => p.clone(),
        None => cgroup::cgroup2_mount()?,
    };
    cgroup::check_cgroup2(&cg_path)?;
    Ok(cg_path)
}

/// Installs (or adopts) the data path while the caller holds the pin
/// root's lock. Leaves nothing half-attached: on an error after the first
/// new attachment, what this call attached is removed.
pub fn install_holding(cfg: &Config, _lock: &PinRootLock) -> Result<InstallReport, LoadError> {
    let layout = PinLayout::new(&cfg.pin_root);
    layout.check_version()?;
    let cg_path = attach_cgroup(cfg)?;
    let fresh = !layout.maps_dir().exists();
    layout.create_dirs()?;
    let mut report = InstallReport {
        pin_root: cfg.pin_root.clone(),
        cgroup: cg_path.clone(),
        attachments: Vec::new(),
        verdict_remedy: false,
        plan: Plan::default(),
        integrity: Vec::new(),
    };
    match install_inner(cfg, &layout, &cg_path, &mut report) {
        Ok(()) => Ok(report),
        Err(e) => {
            for a in report.attachments.iter().filter(|a| a.action == "attached") {
                let _ = std::fs::remove_file(&a.pin);
            }
            if fresh {
                let _ = remove_pins(&layout);
            }
            Err(e)
        }
    }
}

fn install_inner(
    cfg: &Config,
    layout: &PinLayout,
    cg_path: &Path,
    report: &mut InstallReport,
) -> Result<(), LoadError> {
    let cg = open_dir(cg_path)?;
    let cg_fd = cg.as_raw_fd();
    check_same_cgroup(layout, cg_path)?;
    check_pinned_sizes(layout, cfg.sockhash_size)?;
    if !cfg.intercept {
        if let Some(link) = LinkId::INTERCEPT.iter().find(|l| layout.link(**l).exists()) {
            return Err(LoadError::InterceptInstalled {
                link: layout.link(*link),
            });
        }
    }

    // --- splice.bpf.o: sk_msg (+ verdict remedy), and sockops when
    // interception is not installed (intercept.bpf.o's sockops program
    // runs splicing's work besides its own: one program per callback) ---
    let mut splice_obj = MaybeUninit::uninit();
    let mut open = SpliceSkelBuilder::default()
        .open(&mut splice_obj)
        .map_err(bpf("opening splice.bpf.o"))?;
    if let Some(ro) = open.maps.rodata_data.as_deref() {
        if ro.ml_layout_version != LAYOUT_VERSION {
            return Err(LoadError::LayoutMismatch {
                found: ro.ml_layout_version,
            });
        }
    }
    let facts = kernel_facts().map_err(LoadError::KernelProbe)?;
    let plan = integrity::plan(&facts, cfg.verdict_remedy)?;
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
        ro.ml_splice_queue_limit = cfg.splice_queue_limit;
        ro.ml_splice_enabled = u32::from(plan.splice);
        ro.ml_splice_min_messages = cfg.splice_min_messages;
    }
    prepare_maps(open.open_object_mut(), layout, cfg.sockhash_size)?;
    let splice = open.load().map_err(|e| load_err("splice", e))?;
    let socks_fd = splice.maps.ml_socks.as_fd().as_raw_fd();

    if !cfg.intercept {
        report
            .attachments
            .push(attach_sockops(layout, &splice.progs.ml_sockops, cg_fd)?);
    }
    let p = &splice.progs.ml_splice_msg;
    report.attachments.push(attach_to_socks(
        &layout.link(LinkId::SpliceMsg),
        p,
        socks_fd,
    )?);
    let remedy = plan.verdict;
    let verdict_pin = layout.link(LinkId::SpliceVerdict);
    if remedy {
        let p = &splice.progs.ml_splice_verdict;
        report
            .attachments
            .push(attach_to_socks(&verdict_pin, p, socks_fd)?);
    } else if verdict_pin.exists() {
        detach_from_socks(
            &verdict_pin,
            socks_fd,
            libbpf_sys::BPF_SK_SKB_STREAM_VERDICT,
        );
    }
    report.verdict_remedy = remedy;
    report.integrity = integrity::findings(&facts, &plan);
    report.plan = plan;

    // --- intercept.bpf.o: connect/getsockopt/getpeername/DNS + sk_lookup ---
    let mut icpt_obj = MaybeUninit::uninit();
    let mut open = InterceptSkelBuilder::default()
        .open(&mut icpt_obj)
        .map_err(bpf("opening intercept.bpf.o"))?;
    if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
        ro.ml_splice_enabled = u32::from(report.plan.splice);
        ro.ml_splice_min_messages = cfg.splice_min_messages;
    }
    prepare_maps(open.open_object_mut(), layout, cfg.sockhash_size)?;
    let icpt = open.load().map_err(|e| load_err("intercept", e))?;
    let progs = &icpt.progs;
    if cfg.intercept {
        // Adopting a splice-only install swaps this program into its
        // sockops link: never both programs, never neither.
        report
            .attachments
            .push(attach_sockops(layout, &progs.ml_sockops, cg_fd)?);
    }
    let cgroup_progs: Vec<(LinkId, &libbpf_rs::ProgramMut<'_>)> = if cfg.intercept {
        vec![
            (LinkId::Connect4, &progs.ml_connect4),
            (LinkId::Connect6, &progs.ml_connect6),
            (LinkId::Getsockopt, &progs.ml_getsockopt),
            (LinkId::Getpeername4, &progs.ml_getpeername4),
            (LinkId::Getpeername6, &progs.ml_getpeername6),
            (LinkId::Getsockname6, &progs.ml_getsockname6),
            (LinkId::Sendmsg4, &progs.ml_sendmsg4),
            (LinkId::Sendmsg6, &progs.ml_sendmsg6),
            (LinkId::Recvmsg4, &progs.ml_recvmsg4),
            (LinkId::Recvmsg6, &progs.ml_recvmsg6),
        ]
    } else {
        Vec::new()
    };
    for (id, p) in cgroup_progs {
        report
            .attachments
            .push(attach_or_adopt(&layout.link(id), p, || {
                p.attach_cgroup(cg_fd)
                    .map_err(bpf(format!("attaching {id} to the cgroup")))
            })?);
    }
    // Every pod's sk_lookup link gets this build's program.
    refresh_pod_links(layout);
    Ok(())
}

/// Attaches (or swaps into the pinned link) the node's one sockops program.
fn attach_sockops(
    layout: &PinLayout,
    p: &libbpf_rs::ProgramMut<'_>,
    cg_fd: i32,
) -> Result<Attachment, LoadError> {
    attach_or_adopt(&layout.link(LinkId::Sockops), p, || {
        p.attach_cgroup(cg_fd)
            .map_err(bpf("attaching sockops to the cgroup"))
    })
}

/// Swaps a freshly loaded inbound program into every pinned pod link (an
/// agent upgrade); a pod whose link cannot be updated keeps its old one.
fn refresh_pod_links(layout: &PinLayout) {
    for cookie in links::pod_link_cookies(layout) {
        let pin = layout.pod_link(cookie);
        if let Err(err) = update_pod_inbound(layout, cookie, &pin) {
            tracing::warn!(pin = %pin.display(), error = %err, "could not update pod inbound link");
        }
    }
}

/// Loads inbound.bpf.o for one pod: its netns cookie baked in, every map it
/// shares reused from the pins (maps an install did not create, such as
/// the interception maps of a splice-only install, are left out).
fn load_inbound<'obj>(
    layout: &PinLayout,
    cookie: u64,
    storage: &'obj mut MaybeUninit<OpenObject>,
) -> Result<InboundSkel<'obj>, LoadError> {
    let mut open = InboundSkelBuilder::default()
        .open(storage)
        .map_err(bpf("opening inbound.bpf.o"))?;
    match open.maps.rodata_data.as_deref_mut() {
        Some(ro) => ro.ml_lookup_netns = cookie,
        None => {
            return Err(LoadError::Bpf {
                what: "inbound.bpf.o has no .rodata".into(),
                source: libbpf_rs::Error::from(std::io::Error::other("missing .rodata")),
            })
        }
    }
    for mut m in open.open_object_mut().maps_mut() {
        let name = m.name().to_string_lossy().into_owned();
        if !name.starts_with("ml_") {
            continue;
        }
        let id = MapId::from_pin_name(&name).ok_or(LoadError::UnnamedMap(name))?;
        let pin = layout.map(id);
        if pin.exists() {
            m.reuse_pinned_map(&pin)
                .map_err(bpf(format!("reusing {}", pin.display())))?;
        } else {
            m.set_autocreate(false)
                .map_err(bpf(format!("leaving out {id}")))?;
        }
    }
    open.load().map_err(|e| load_err("inbound", e))
}

/// Attaches a pod's own inbound sk_lookup program to its netns and pins
/// the link at `pin` (see bpf/inbound.bpf.c).
pub fn attach_pod_inbound(
    layout: &PinLayout,
    netns: std::os::fd::BorrowedFd<'_>,
    cookie: u64,
    pin: &Path,
) -> Result<(), LoadError> {
    let mut storage = MaybeUninit::uninit();
    let skel = load_inbound(layout, cookie, &mut storage)?;
    let mut link = skel
        .progs
        .ml_inbound_lookup
        .attach_netns(netns.as_raw_fd())
        .map_err(bpf(
            "attaching the inbound sk_lookup program to the pod netns",
        ))?;
    link.pin(pin)
        .map_err(bpf(format!("pinning {}", pin.display())))
}

/// Puts this build's inbound program into a pod's pinned link.
fn update_pod_inbound(layout: &PinLayout, cookie: u64, pin: &Path) -> Result<(), LoadError> {
    let mut storage = MaybeUninit::uninit();
    let skel = load_inbound(layout, cookie, &mut storage)?;
    Link::open(pin)
        .and_then(|mut l| l.update_prog(&skel.progs.ml_inbound_lookup))
        .map_err(bpf(format!("updating {}", pin.display())))
}

/// BPF_LINK_DETACH on a pinned link: synchronous for cgroup, netns and
/// sockmap links. Failures are ignored: unpinning still frees the link.
fn detach_pinned_link(pin: &Path) {
    if let Some(fd) = links::obj_get(pin) {
        // SAFETY: a link fd we own (closed when `fd` drops).
        unsafe { libbpf_sys::bpf_link_detach(fd.as_raw_fd()) };
    }
}

/// Removes every pin under this build's layout version. Programs and maps
/// go away with their last reference; nothing else is touched.
pub fn remove_pins(layout: &PinLayout) -> std::io::Result<usize> {
    let mut removed = 0;
    let vdir = layout.version_dir();
    if !vdir.exists() {
        return Ok(0);
    }
    // Links first, detached explicitly so the hooks are gone when this
    // returns (dropping the last reference detaches only later); then
    // maps.
    for dir in [layout.pod_links_dir(), layout.links_dir()] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.path().is_file() {
                    detach_pinned_link(&e.path());
                }
            }
        }
    }
    for dir in [
        layout.pod_links_dir(),
        layout.links_dir(),
        layout.maps_dir(),
    ] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    continue;
                }
                std::fs::remove_file(&p)?;
                removed += 1;
            }
        }
    }
    // The CNI attachment records are directories only.
    match std::fs::remove_dir_all(layout.cni_dir()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    for dir in [
        layout.pod_links_dir(),
        layout.links_dir(),
        layout.maps_dir(),
        vdir,
    ] {
        if dir.exists() {
            std::fs::remove_dir(&dir)?;
        }
    }
    // The root itself, if we left it empty.
    let _ = std::fs::remove_dir(layout.root());
    Ok(removed)
}
