//! A second, independent data-path install on a node's cgroup (own pin
//! root, maps and pod registry), for benchmark variants that must not share
//! state with the node's main install. With `splice: false` the sk_msg
//! (and stream verdict) links are unpinned right after installing, which
//! detaches them: sockets of its pods still enter its sockhash, but every
//! byte takes the TCP stack. That is "eBPF interception without splicing",
//! a variant meshlane itself does not offer; only the benchmark makes it.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::{unique_tag, Node, Pod};
use crate::datapath::{LinkId, PinLayout};
use crate::loader::{self, Config};
use crate::pods::{PodRecord, PodSpec, Registry};

pub struct SideInstall {
    pub tag: String,
    pub layout: PinLayout,
    pub splice: bool,
}

impl SideInstall {
    pub fn new(node: &Node, splice: bool) -> Result<Self> {
        let tag = unique_tag("meshlane-s");
        let side = Self {
            layout: PinLayout::new(PathBuf::from("/sys/fs/bpf").join(&tag)),
            tag,
            splice,
        };
        // From here Drop removes the pins, whatever happens next.
        let cfg = Config {
            pin_root: side.layout.root().to_path_buf(),
            ..node.config()
        };
        loader::install(&cfg).context("installing the side data path")?;
        if !splice {
            for link in [LinkId::SpliceMsg, LinkId::SpliceVerdict] {
                let pin = side.layout.link(link);
                if pin.exists() {
                    std::fs::remove_file(&pin)
                        .with_context(|| format!("detaching {}", pin.display()))?;
                }
            }
        }
        Ok(side)
    }

    /// Registers `pod` with `spec` in this install's registry.
    pub fn register(&self, pod: &Pod, spec: &PodSpec) -> Result<PodRecord> {
        Ok(Registry::open(&self.layout)?.add(&pod.netns, spec)?)
    }

    pub fn counter(&self, name: &str) -> u64 {
        crate::status::read_counters(&self.layout)
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for SideInstall {
    fn drop(&mut self) {
        if let Err(e) = loader::remove_pins(&self.layout) {
            eprintln!("sim: removing pins of {}: {e}", self.tag);
        }
    }
}
