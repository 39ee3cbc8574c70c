//! Byte integrity policy: what the data path does about each kernel
//! behaviour that would let an application tell a spliced socket from a
//! TCP one. Pure: it takes what the probes measured (src/probe) and the
//! operator's settings, and decides whether the stream verdict is attached,
//! whether splicing runs at all, and whether a pod may opt its application
//! sockets in. The loader, `pod add`, `probe` and `status` all ask here, so
//! they can never disagree.

use serde::Serialize;

use crate::probe::KernelBehaviour;

/// When to attach the stream verdict program to ml_socks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerdictRemedy {
    /// Where it passes every byte exactly once (no overlap duplication, or
    /// meshlane's verdict cuts it); else only if readers would otherwise
    /// miss epoll wake-ups.
    Auto,
    On,
    Off,
}

/// What the kernel offers the data path, as measured at start.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq)]
pub struct KernelFacts {
    pub behaviour: KernelBehaviour,
    /// meshlane's own stream verdict passes an overlapping retransmission
    /// exactly once (it can read TCP sequence numbers: Linux 6.3+).
    pub verdict_trims_overlaps: bool,
}

/// Environment variable that overrides measured facts, for proving that
/// a wrong probe is caught (the kernel matrix's broken-probe check): a
/// comma-separated list of `FACT=true|false`, FACT one of [`FACT_NAMES`].
/// Never set on a node; the agent logs every override it applies.
pub const PROBE_FAULT_ENV: &str = "MESHLANE_PROBE_FAULT";

/// The facts [`PROBE_FAULT_ENV`] can override.
pub const FACT_NAMES: [&str; 7] = [
    "fionread_hidden",
    "epoll_wakeup_lost",
    "overlap_duplicated",
    "splice_read_missing",
    "disconnect_keeps_bytes",
    "urgent_inlined",
    "verdict_trims_overlaps",
];

impl KernelFacts {
    fn fact_mut(&mut self, name: &str) -> Option<&mut bool> {
        let b = &mut self.behaviour;
        Some(match name {
            "fionread_hidden" => &mut b.fionread_hidden,
            "epoll_wakeup_lost" => &mut b.epoll_wakeup_lost,
            "overlap_duplicated" => &mut b.overlap_duplicated,
            "splice_read_missing" => &mut b.splice_read_missing,
            "disconnect_keeps_bytes" => &mut b.disconnect_keeps_bytes,
            "urgent_inlined" => &mut b.urgent_inlined,
            "verdict_trims_overlaps" => &mut self.verdict_trims_overlaps,
            _ => return None,
        })
    }

    /// Applies a [`PROBE_FAULT_ENV`] spec; returns one line per override.
    pub fn apply_faults(&mut self, spec: &str) -> Result<Vec<String>, FaultError> {
        let mut applied = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let bad = || FaultError(item.to_string());
            let (name, value) = item.split_once('=').ok_or_else(bad)?;
            let value: bool = value.trim().parse().map_err(|_| bad())?;
            let fact = self.fact_mut(name.trim()).ok_or_else(bad)?;
            applied.push(format!(
                "{PROBE_FAULT_ENV}: {} measured {}, overridden to {value}",
                name.trim(),
                *fact
            ));
            *fact = value;
        }
        Ok(applied)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{PROBE_FAULT_ENV}: {0:?} is not FACT=true|false with FACT one of {FACT_NAMES:?}")]
pub struct FaultError(String);

/// The data path's configuration for byte integrity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Plan {
    /// Attach ml_splice_verdict to ml_socks.
    pub verdict: bool,
    /// Put sockets in ml_socks at all. Off only where no configuration
    /// keeps every byte exact (lost wake-ups without a verdict, duplicated
    /// overlaps with one).
    pub splice: bool,
    /// Warnings for the log: a setting the operator forced that this
    /// kernel makes risky.
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("--verdict-remedy on: this kernel's stream verdict delivers the overlapping head of retransmitted segments twice and meshlane's verdict cannot cut it here (it needs bpf_cast_to_kern_ctx, Linux 6.3): use --verdict-remedy auto")]
    VerdictUnsafe,
    #[error("application sockets cannot be spliced safely on this kernel: {0}")]
    AppHopsUnsafe(String),
}

/// Why `--verdict-remedy off` is not the default where the verdict is exact.
const OFF_SHORT_STREAMS: &str =
    "--verdict-remedy off: without the stream verdict, the splice soak \
     with provoked overlapping retransmissions saw sidecar-to-sidecar streams end early (cause \
     open, docs/benchmarks.md); the default attaches the verdict on this kernel";

/// Decides the verdict and whether splicing runs.
pub fn plan(facts: &KernelFacts, remedy: VerdictRemedy) -> Result<Plan, PolicyError> {
    let b = &facts.behaviour;
    let verdict_exact = !b.overlap_duplicated || facts.verdict_trims_overlaps;
    let mut warnings = Vec::new();
    let (verdict, splice) = match remedy {
        VerdictRemedy::On if !verdict_exact => return Err(PolicyError::VerdictUnsafe),
        VerdictRemedy::On => (true, true),
        VerdictRemedy::Off => {
            if b.epoll_wakeup_lost {
                warnings.push(
                    "--verdict-remedy off on a kernel whose sockhash sockets miss epoll wake-ups \
                     for bytes that come through TCP: spliced proxies can stall"
                        .to_string(),
                );
            }
            if verdict_exact {
                warnings.push(OFF_SHORT_STREAMS.to_string());
            }
            (false, true)
        }
        VerdictRemedy::Auto if verdict_exact => (true, true),
        VerdictRemedy::Auto if !b.epoll_wakeup_lost => (false, true),
        VerdictRemedy::Auto => {
            warnings.push(
                "splicing is off: without a stream verdict this kernel loses epoll wake-ups, \
                 with one it duplicates overlapping retransmissions, and meshlane's verdict \
                 cannot cut them here (Linux 6.3+ can); interception is unaffected"
                    .to_string(),
            );
            (false, false)
        }
    };
    Ok(Plan {
        verdict,
        splice,
        warnings,
    })
}

/// The plan an installed data path runs under, given whether its stream
/// verdict is attached (pinned): the default's when they agree, else the
/// forced setting's.
pub fn installed(facts: &KernelFacts, verdict_attached: bool) -> Plan {
    let auto = plan(facts, VerdictRemedy::Auto).unwrap_or_default();
    if auto.verdict == verdict_attached {
        return auto;
    }
    let forced = if verdict_attached {
        VerdictRemedy::On
    } else {
        VerdictRemedy::Off
    };
    plan(facts, forced).unwrap_or(auto)
}

/// Whether a pod may opt its application sockets in to splicing: only
/// where every behaviour an application could see is absent or handled.
pub fn app_hops_allowed(facts: &KernelFacts, plan: &Plan) -> Result<(), PolicyError> {
    let b = &facts.behaviour;
    let mut why = Vec::new();
    if !plan.splice {
        why.push("splicing is off on this kernel");
    }
    if b.splice_read_missing {
        why.push("splice(2) does not see spliced bytes");
    }
    if b.urgent_inlined {
        why.push("urgent data (MSG_OOB) arrives in-band");
    }
    if b.fionread_hidden && !plan.verdict {
        why.push("FIONREAD misses bytes that arrive through TCP");
    }
    if plan.verdict && b.splice_read_missing {
        why.push("with the stream verdict, splice(2) sees no byte at all");
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(PolicyError::AppHopsUnsafe(why.join("; ")))
    }
}

/// One behaviour, whether this kernel has it, and what meshlane does.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub behaviour: &'static str,
    pub present: bool,
    pub meshlane: String,
}

/// The report `meshlane probe` and `status` print.
pub fn findings(facts: &KernelFacts, plan: &Plan) -> Vec<Finding> {
    let b = &facts.behaviour;
    let app_only = "only proxy sockets are spliced; application sockets stay plain TCP";
    let verdict = if plan.verdict {
        "stream verdict attached"
    } else {
        "no stream verdict"
    };
    vec![
        Finding {
            behaviour: "FIONREAD misses TCP-path bytes of a sockhash socket",
            present: b.fionread_hidden,
            meshlane: if plan.verdict {
                format!("stream verdict attached: TCP-path bytes are counted; {app_only}")
            } else {
                format!("{app_only} (proxies do not rely on FIONREAD)")
            },
        },
        Finding {
            behaviour: "epoll misses wake-ups for TCP-path bytes of a sockhash socket",
            present: b.epoll_wakeup_lost,
            meshlane: if plan.verdict || !b.epoll_wakeup_lost {
                format!("{verdict}; readers are woken")
            } else if plan.splice {
                "no stream verdict (forced): spliced proxies can stall".into()
            } else {
                "splicing off".into()
            },
        },
        Finding {
            behaviour: "a stream verdict re-delivers the overlapping head of a retransmission",
            present: b.overlap_duplicated,
            meshlane: match (plan.verdict, facts.verdict_trims_overlaps) {
                (false, _) => "no stream verdict: TCP itself skips old bytes".into(),
                (true, true) => "meshlane's verdict cuts the old head (per-socket cursor)".into(),
                (true, false) => "verdict attached on a kernel without this behaviour".into(),
            },
        },
        Finding {
            behaviour: "splice(2) does not see bytes spliced into a socket",
            present: b.splice_read_missing,
            meshlane: app_only.into(),
        },
        Finding {
            behaviour: "spliced bytes survive connect(AF_UNSPEC) into the next connection",
            present: b.disconnect_keeps_bytes,
            meshlane: "a disconnected socket leaves ml_socks, dropping its unread bytes like TCP"
                .into(),
        },
        Finding {
            behaviour: "urgent data (MSG_OOB) sent through a splice arrives in-band",
            present: b.urgent_inlined,
            meshlane: app_only.into(),
        },
    ]
}

/// Facts, plan and findings together, as `probe` and `status` show them.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What the probes measured (after any [`PROBE_FAULT_ENV`] override).
    pub behaviour: KernelBehaviour,
    pub verdict_trims_overlaps: bool,
    pub verdict: bool,
    pub splice: bool,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn new(facts: &KernelFacts, plan: &Plan) -> Self {
        Self {
            behaviour: facts.behaviour,
            verdict_trims_overlaps: facts.verdict_trims_overlaps,
            verdict: plan.verdict,
            splice: plan.splice,
            findings: findings(facts, plan),
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "byte integrity (splicing {}, stream verdict {})",
            if self.splice { "on" } else { "OFF" },
            if self.verdict {
                "attached"
            } else {
                "not attached"
            }
        )?;
        for x in &self.findings {
            writeln!(
                f,
                "  {:<3} {}\n      -> {}",
                if x.present { "yes" } else { "no" },
                x.behaviour,
                x.meshlane
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(f: impl FnOnce(&mut KernelBehaviour), trims: bool) -> KernelFacts {
        let mut behaviour = KernelBehaviour::default();
        f(&mut behaviour);
        KernelFacts {
            behaviour,
            verdict_trims_overlaps: trims,
        }
    }

    #[test]
    fn auto_attaches_the_verdict_where_it_is_exact() {
        let k = facts(
            |b| {
                b.fionread_hidden = true;
                b.overlap_duplicated = true
            },
            true,
        );
        let p = plan(&k, VerdictRemedy::Auto).unwrap();
        assert!(p.verdict && p.splice && p.warnings.is_empty());
    }

    #[test]
    fn auto_leaves_a_duplicating_verdict_off_while_readers_are_woken() {
        let k = facts(|b| b.overlap_duplicated = true, false);
        let p = plan(&k, VerdictRemedy::Auto).unwrap();
        assert!(!p.verdict && p.splice && p.warnings.is_empty());
    }

    #[test]
    fn auto_attaches_a_trimming_verdict_when_wake_ups_are_lost() {
        let k = facts(
            |b| {
                b.epoll_wakeup_lost = true;
                b.overlap_duplicated = true
            },
            true,
        );
        let p = plan(&k, VerdictRemedy::Auto).unwrap();
        assert!(p.verdict && p.splice);
    }

    #[test]
    fn auto_turns_splicing_off_when_nothing_is_exact() {
        let k = facts(
            |b| {
                b.epoll_wakeup_lost = true;
                b.overlap_duplicated = true
            },
            false,
        );
        let p = plan(&k, VerdictRemedy::Auto).unwrap();
        assert!(!p.verdict && !p.splice && p.warnings.len() == 1);
    }

    #[test]
    fn forced_verdict_is_refused_where_it_duplicates() {
        let k = facts(|b| b.overlap_duplicated = true, false);
        assert_eq!(plan(&k, VerdictRemedy::On), Err(PolicyError::VerdictUnsafe));
        let k = facts(|b| b.overlap_duplicated = true, true);
        assert!(plan(&k, VerdictRemedy::On).unwrap().verdict);
    }

    #[test]
    fn forced_off_warns_about_lost_wake_ups_and_short_streams() {
        let k = facts(|b| b.epoll_wakeup_lost = true, true);
        let p = plan(&k, VerdictRemedy::Off).unwrap();
        assert!(!p.verdict && p.splice && p.warnings.len() == 2);
    }

    #[test]
    fn app_hops_need_every_behaviour_absent() {
        let clean = facts(|_| {}, true);
        let p = plan(&clean, VerdictRemedy::Auto).unwrap();
        assert_eq!(app_hops_allowed(&clean, &p), Ok(()));
        let k = facts(|b| b.splice_read_missing = true, true);
        let p = plan(&k, VerdictRemedy::Auto).unwrap();
        let e = app_hops_allowed(&k, &p).unwrap_err().to_string();
        assert!(e.contains("splice(2)"), "{e}");
    }

    #[test]
    fn faults_override_named_facts_and_refuse_anything_else() {
        let mut k = facts(|b| b.overlap_duplicated = true, false);
        let lines = k
            .apply_faults("overlap_duplicated=false, verdict_trims_overlaps=true")
            .unwrap();
        assert_eq!(lines.len(), 2);
        assert!(!k.behaviour.overlap_duplicated && k.verdict_trims_overlaps);
        for name in FACT_NAMES {
            assert!(k.apply_faults(&format!("{name}=true")).is_ok(), "{name}");
        }
        for bad in ["overlap_duplicated", "nope=true", "urgent_inlined=1"] {
            assert!(k.apply_faults(bad).is_err(), "{bad}");
        }
        assert_eq!(k.apply_faults(""), Ok(vec![]));
    }

    #[test]
    fn findings_name_every_behaviour() {
        let k = facts(|b| b.overlap_duplicated = true, true);
        let p = plan(&k, VerdictRemedy::Auto).unwrap();
        let f = findings(&k, &p);
        assert_eq!(f.len(), 6);
        assert!(f[2].present && f[2].meshlane.contains("cuts the old head"));
        let p = plan(&k, VerdictRemedy::Off).unwrap();
        assert!(findings(&k, &p)[2].meshlane.contains("TCP itself"));
    }
}
