//! Readiness of the agent: ready once the data path is installed, its pins
//! are present, the pod registry has been swept once and, with a pod
//! source, the source has delivered its first complete listing and the
//! registry has been reconciled with it; with the xDS client, once every
//! pod's stream has its first complete snapshot; not while draining.
//! Checked afresh at every probe, so an
//! uninstall under a running agent turns it unready.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::datapath::{LinkId, PinLayout};

/// Node-wide links whose pins must be present (the sockops program and
/// splicing's sk_msg; the interception hooks are checked when installed
/// with them).
const CORE_LINKS: [LinkId; 2] = [LinkId::Sockops, LinkId::SpliceMsg];

#[derive(Debug, Default)]
pub struct Readiness {
    installed: AtomicBool,
    synced: AtomicBool,
    draining: AtomicBool,
    intercept: AtomicBool,
    xds_required: AtomicBool,
    xds_synced: AtomicBool,
    pod_source_required: AtomicBool,
    pod_source_synced: AtomicBool,
}

impl Readiness {
    pub fn set_installed(&self, intercept: bool) {
        self.intercept.store(intercept, Ordering::Relaxed);
        self.installed.store(true, Ordering::Relaxed);
    }

    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
    }

    /// The xDS client runs: readiness waits for its streams' sync.
    pub fn require_xds(&self) {
        self.xds_required.store(true, Ordering::Relaxed);
    }

    pub fn set_xds_synced(&self, synced: bool) {
        self.xds_synced.store(synced, Ordering::Relaxed);
    }

    /// The agent has a pod source: not ready until it is synced.
    pub fn require_pod_source(&self) {
        self.pod_source_required.store(true, Ordering::Relaxed);
    }

    pub fn set_pod_source_synced(&self) {
        self.pod_source_synced.store(true, Ordering::Relaxed);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// What keeps the agent from being ready (empty: ready).
    pub fn missing(&self, layout: &PinLayout) -> Vec<String> {
        let mut out = Vec::new();
        if self.draining.load(Ordering::Relaxed) {
            out.push("draining (shutting down)".to_string());
        }
        if !self.installed.load(Ordering::Relaxed) {
            out.push("data path not installed yet".to_string());
        }
        if !layout.maps_dir().is_dir() {
            out.push(format!("pins missing: {}", layout.maps_dir().display()));
        }
        let mut links: Vec<LinkId> = CORE_LINKS.to_vec();
        if self.intercept.load(Ordering::Relaxed) {
            links.push(LinkId::Connect4);
        }
        for l in links {
            if !layout.link(l).exists() {
                out.push(format!("link pin missing: {}", layout.link(l).display()));
            }
        }
        if !self.synced.load(Ordering::Relaxed) {
            out.push("pod registry not swept yet".to_string());
        }
        if self.xds_required.load(Ordering::Relaxed) && !self.xds_synced.load(Ordering::Relaxed) {
            out.push("xDS: not every pod's stream has its first complete snapshot".to_string());
        }
        if self.pod_source_required.load(Ordering::Relaxed)
            && !self.pod_source_synced.load(Ordering::Relaxed)
        {
            out.push(
                "pod source not synced yet (no complete listing of this node's pods)".to_string(),
            );
        }
        out
    }
}
