//! A second simulated node for cross-node traffic. It has its own network
//! stack (a "host" netns holding its CNI bridge), joined to the first node's
//! host (the root netns) by a veth pair that plays the wire: a packet from a
//! pod of node A leaves bridge A, is routed over the veth pair and enters
//! bridge B. Its data path is a second, independent install (own pin root,
//! own maps and pod registry), attached to the same cgroup as the first node
//! ([`PeerNode::new`]) or to a cgroup of its own ([`PeerNode::on_cgroup`]),
//! so node A's programs never know node B's pods (no splicing across the
//! "wire"), while node B's pods get splicing and interception from node B's
//! install, as on a real second node.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::pod::sh;
use super::{unique_tag, Node, Pod, Subnet};
use crate::layout::PinLayout;
use crate::loader::{self, Config};
use crate::pods::{PodRecord, PodSpec, Registry};

pub struct PeerNode {
    pub tag: String,
    pub layout: PinLayout,
    pub subnet: Subnet,
    host_ns: String,
    veth: String,
    route: String,
    pods_made: u32,
}

impl PeerNode {
    /// Makes node B next to `node` (A): host netns, wire, bridge subnet,
    /// and a second data path install on A's cgroup.
    pub fn new(node: &Node) -> Result<Self> {
        Self::on_cgroup(node, node.cgroup.path())
    }

    /// The same, node B's data path installed on `cgroup` instead: only
    /// the processes (and the sockets) made there run node B's programs,
    /// as on a real second node. The benchmark puts node B's pods there.
    pub fn on_cgroup(node: &Node, cgroup: &Path) -> Result<Self> {
        let tag = unique_tag("meshlane-p");
        let subnet = Subnet::claim()?;
        let k = subnet.index;
        let mut peer = Self {
            layout: PinLayout::new(PathBuf::from("/sys/fs/bpf").join(&tag)),
            host_ns: tag.clone(),
            veth: format!("mlw{k}a"),
            route: format!("10.201.{k}.0/24"),
            tag,
            subnet,
            pods_made: 0,
        };
        // Nothing exists yet; from here on Drop removes what was made.
        peer.wire().context("wiring the second node")?;
        loader::install(&Config {
            pin_root: peer.layout.root().to_path_buf(),
            cgroup: Some(cgroup.to_path_buf()),
            sockhash_size: node.opts.sockhash_size,
            splice_queue_limit: node.opts.splice_queue_limit,
            splice_min_messages: node.opts.splice_min_messages,
            intercept: node.opts.intercept,
            verdict_remedy: node.opts.verdict_remedy,
        })
        .context("installing the second node's data path")?;
        Ok(peer)
    }

    fn wire(&mut self) -> Result<()> {
        let k = self.subnet.index;
        let ns = self.host_ns.clone();
        let (a, b) = (self.veth.clone(), format!("mlw{k}b"));
        let (ip_a, ip_b) = (format!("10.202.{k}.1"), format!("10.202.{k}.2"));
        sh(&["ip", "netns", "add", &ns])?;
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        sh(&[
            "ip", "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &ns,
        ])?;
        sh(&["ip", "addr", "add", &format!("{ip_a}/30"), "dev", &a])?;
        sh(&["ip", "link", "set", &a, "up"])?;
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip_b}/30"),
            "dev",
            &b,
        ])?;
        sh(&["ip", "-n", &ns, "link", "set", &b, "up"])?;
        sh(&["ip", "-n", &ns, "route", "add", "default", "via", &ip_a])?;
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        sh(&["ip", "route", "add", &self.route, "via", &ip_b])?;
        Ok(())
    }

    /// A new pod on node B's bridge (not registered). The CNI plugin runs
    /// inside node B's host netns, so the bridge and host veths live there.
    pub fn pod(&mut self, name: &str) -> Result<Pod> {
        self.pods_made += 1;
        let ns = format!("{}-{}{}", self.tag, name, self.pods_made);
        let host =
            crate::netns::open_netns(&PathBuf::from(format!("/run/netns/{}", self.host_ns)))?;
        let subnet = &self.subnet;
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(host.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("entering node B's host netns")?;
                Pod::create(&ns, subnet, false)
            })
            .join()
            .unwrap_or_else(|_| bail!("pod creation thread panicked"))
        })
    }

    pub fn registry(&self) -> Result<Registry> {
        Ok(Registry::open(&self.layout)?)
    }

    /// Registers `pod` (of this node) with `spec` in node B's registry.
    pub fn register(&self, pod: &Pod, spec: &PodSpec) -> Result<PodRecord> {
        Ok(self.registry()?.add(&pod.netns, spec)?)
    }

    pub fn counter(&self, name: &str) -> u64 {
        crate::status::counter(&self.layout, name)
    }
}

impl Drop for PeerNode {
    fn drop(&mut self) {
        if let Err(e) = loader::remove_pins(&self.layout) {
            eprintln!("sim: removing pins of {}: {e}", self.tag);
        }
        let quiet = |args: &[&str]| {
            let _ = Command::new(args[0])
                .args(&args[1..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        quiet(&["ip", "route", "del", &self.route]);
        quiet(&["ip", "link", "del", &self.veth]);
        // Deleting the host netns takes bridge B and its host veths with it.
        quiet(&["ip", "netns", "del", &self.host_ns]);
    }
}
