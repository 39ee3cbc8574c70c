//! A simulated node: private cgroup, private pin root with the data path
//! installed on that cgroup, one CNI bridge for its pods.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::{unique_tag, Pod, Subnet, TestCgroup};
use crate::datapath::{MapId, PinLayout};
use crate::loader::{self, Config, InstallReport, VerdictRemedy};
use crate::pods::{PodRecord, PodSpec, Registry};

#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub sockhash_size: u32,
    pub splice_queue_limit: u32,
    pub splice_min_messages: u32,
    pub intercept: bool,
    pub verdict_remedy: VerdictRemedy,
    pub ipv6: bool,
    /// Install the data path at creation (false: call `install` later).
    pub install: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            sockhash_size: 65536,
            splice_queue_limit: crate::loader::default_splice_queue_limit(),
            splice_min_messages: crate::loader::DEFAULT_SPLICE_MIN_MESSAGES,
            intercept: true,
            verdict_remedy: VerdictRemedy::Auto,
            ipv6: false,
            install: true,
        }
    }
}

pub struct Node {
    pub tag: String,
    pub layout: PinLayout,
    pub opts: NodeOptions,
    pub subnet: Subnet,
    pub cgroup: TestCgroup,
    pods_made: u32,
}

impl Node {
    /// Enters a fresh cgroup and (optionally) installs on it.
    pub fn new(opts: NodeOptions) -> Result<Self> {
        let tag = unique_tag("meshlane-t");
        let cgroup = TestCgroup::enter(&tag)?;
        let subnet = Subnet::claim()?;
        let node = Self {
            layout: PinLayout::new(PathBuf::from("/sys/fs/bpf").join(&tag)),
            tag,
            opts,
            subnet,
            cgroup,
            pods_made: 0,
        };
        if node.opts.install {
            node.install()?;
        }
        Ok(node)
    }

    pub fn config(&self) -> Config {
        Config {
            pin_root: self.layout.root().to_path_buf(),
            cgroup: Some(self.cgroup.path().to_path_buf()),
            sockhash_size: self.opts.sockhash_size,
            splice_queue_limit: self.opts.splice_queue_limit,
            splice_min_messages: self.opts.splice_min_messages,
            intercept: self.opts.intercept,
            verdict_remedy: self.opts.verdict_remedy,
        }
    }

    pub fn install(&self) -> Result<InstallReport> {
        loader::install(&self.config()).context("installing the data path")
    }

    pub fn uninstall(&self) -> Result<usize> {
        Ok(loader::remove_pins(&self.layout)?)
    }

    /// A new pod on this node's bridge (not registered).
    pub fn pod(&mut self, name: &str) -> Result<Pod> {
        self.pods_made += 1;
        let ns = format!("{}-{}{}", self.tag, name, self.pods_made);
        Pod::create(&ns, &self.subnet, self.opts.ipv6)
    }

    pub fn registry(&self) -> Result<Registry> {
        Ok(Registry::open(&self.layout)?)
    }

    /// Registers `pod` with `spec`.
    pub fn register(&self, pod: &Pod, spec: &PodSpec) -> Result<PodRecord> {
        Ok(self.registry()?.add(&pod.netns, spec)?)
    }

    pub fn counter(&self, name: &str) -> u64 {
        crate::status::counter(&self.layout, name)
    }

    /// Entries in the node's map `map` (0 when it is not pinned).
    pub fn entries(&self, map: MapId) -> usize {
        crate::status::map_fill(&self.layout, map).map_or(0, |m| m.entries)
    }

    /// [`Self::entries`] by the map's pin name, for tests that name maps
    /// as `meshlane status` shows them. Panics on a name that is no
    /// shared map (a typo must not read as an empty map).
    pub fn map_entries(&self, pin_name: &str) -> usize {
        let map = MapId::from_pin_name(pin_name)
            .unwrap_or_else(|| panic!("{pin_name:?} is not a shared map of meshlane's"));
        self.entries(map)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(e) = loader::remove_pins(&self.layout) {
            eprintln!("sim: removing pins of {}: {e}", self.tag);
        }
        // The API socket of an agent of this node that was SIGKILLed.
        let _ = std::fs::remove_file(crate::api::socket_path(self.layout.root()));
    }
}
