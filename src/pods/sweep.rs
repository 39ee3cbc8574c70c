//! Registrations that outlive their pod. A pod's netns can vanish without
//! a `pod rm` (runtime crash, node reboot race); the kernel then severs the
//! pod's pinned sk_lookup link (its netns inode reads 0). The agent's sweep
//! removes such registrations, and the leftovers of an add or remove killed
//! half-way: a link without a record, or addresses with neither.

use serde::{Deserialize, Serialize};

use super::{PodError, Registry};
use crate::datapath::links::{self, LinkState};

/// One registration the sweep removed, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Swept {
    pub netns_cookie: u64,
    pub name: String,
    pub reason: String,
}

/// One pass. Returns None without doing anything while an add or remove
/// holds the registry (its half-written state is not a leftover yet).
pub fn sweep(reg: &Registry) -> Result<Option<Vec<Swept>>, PodError> {
    let Some(_held) = reg.layout().try_lock_registry()? else {
        return Ok(None);
    };
    // Every recorded pod, by cookie.
    let names = reg.names();
    let linked = links::pod_link_cookies(reg.layout());
    let mut out = Vec::new();
    for cookie in &linked {
        let reason = match links::pod_link_state(reg.layout(), *cookie) {
            LinkState::Severed => "netns gone",
            LinkState::Alive if !names.contains_key(cookie) => "registration never completed",
            _ => continue,
        };
        reg.remove_unlocked(*cookie, &format!("netns cookie {cookie}"))?;
        out.push(Swept {
            netns_cookie: *cookie,
            name: names.get(cookie).cloned().unwrap_or_default(),
            reason: reason.to_string(),
        });
    }
    for cookie in reg.ip_owners() {
        if names.contains_key(&cookie) || linked.contains(&cookie) {
            continue;
        }
        reg.remove_ips_of(cookie);
        out.push(Swept {
            netns_cookie: cookie,
            name: String::new(),
            reason: "addresses without a registration".to_string(),
        });
    }
    for s in &out {
        tracing::warn!(cookie = s.netns_cookie, pod = %s.name, reason = s.reason, "pod registration swept");
    }
    Ok(Some(out))
}
