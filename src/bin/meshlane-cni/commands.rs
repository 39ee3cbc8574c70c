//! The commands of the plugin: what each asks the agent and what it
//! prints. Fail closed: an ADD for a pod outside the excluded namespaces
//! fails when the agent cannot answer (unreachable, slow, refusing); pods
//! of excluded namespaces never wait for the agent. DEL never fails
//! because the agent is away (its sweep removes what a pod left once the
//! netns is gone).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use meshlane::api::{self, ApiError, Reply, Request};
use meshlane::cni::attach::{self, CniAdd, CniAdded, CniCheck, CniDel, CniGc};
use meshlane::cni::{result, version, CniError, Code, Command, Invocation, PluginConf};

/// Runs the invocation; Ok(Some(json)) is printed on stdout.
pub fn run(var: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let inv = Invocation::from_env(var)?;
    if inv.command == Command::Version {
        let input = meshlane::cni::conf::version_of(stdin);
        return Ok(Some(version::version_reply(input.as_deref())));
    }
    let conf = PluginConf::parse(stdin)?;
    match inv.command {
        Command::Add => add(&inv, &conf).map(Some),
        Command::Del => del(&inv, &conf).map(|()| None),
        Command::Check => check(&inv, &conf).map(|()| None),
        Command::Gc => gc(&conf).map(|()| None),
        Command::Status => status(&conf).map(|()| None),
        Command::Version => Ok(None),
    }
}

/// prevResult, required on ADD and CHECK (meshlane-cni only chains).
fn prev_result<'a>(inv: &Invocation, conf: &'a PluginConf) -> Result<&'a Value, CniError> {
    conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            Code::InvalidConfig,
            format!("{}: no prevResult", inv.describe()),
            "meshlane-cni is a chained plugin: it must come after the interface plugin in a conflist",
        )
    })
}

/// The netns must exist for ADD and CHECK (code 3 otherwise).
fn require_netns(inv: &Invocation) -> Result<&Path, CniError> {
    let netns = inv.netns.as_deref().unwrap_or(Path::new(""));
    if !netns.exists() {
        return Err(CniError::new(
            Code::UnknownContainer,
            format!("{}: network namespace does not exist", inv.describe()),
            format!("CNI_NETNS {} does not exist", netns.display()),
        ));
    }
    Ok(netns)
}

/// Calls the agent; the timeout is the configuration's.
fn ask(conf: &PluginConf, req: &Request) -> Result<Reply, ApiError> {
    api::call(&conf.agent_socket, req, conf.agent_timeout)
}

/// The CNI error for an agent that did not do what was asked.
fn agent_error(inv: &Invocation, conf: &PluginConf, e: ApiError, unavailable: Code) -> CniError {
    let who = inv.describe();
    match e {
        ApiError::Refused(why) => CniError::new(Code::RegistrationRefused, format!("{who}: the meshlane agent refused"), why),
        ApiError::Io { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
        {
            CniError::new(
                unavailable,
                format!("{who}: the meshlane agent did not answer within {:.1}s", conf.agent_timeout.as_secs_f64()),
                format!("agent socket {}: failing closed, nothing was registered; the runtime will retry", conf.agent_socket.display()),
            )
        }
        other => CniError::new(
            unavailable,
            format!("{who}: the meshlane agent is unreachable"),
            format!("{other}: failing closed (this pod needs the mesh); start the agent, the runtime will retry"),
        ),
    }
}

fn add(inv: &Invocation, conf: &PluginConf) -> Result<Value, CniError> {
    let prev = prev_result(inv, conf)?;
    let out = result::passthrough(prev, &conf.cni_version);
    let netns = require_netns(inv)?;
    let Some(pod) = inv.pod() else {
        eprintln!("meshlane-cni: {}: no K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS: not a Kubernetes pod, left alone", inv.describe());
        return Ok(out);
    };
    if conf.excluded(&pod.namespace) {
        return Ok(out);
    }
    let ips = result::sandbox_ips(prev, netns)?;
    let timeout_ms = u64::try_from(conf.agent_timeout.as_millis()).unwrap_or(u64::MAX);
    let req = Request::CniAdd(CniAdd {
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
        netns: netns.to_path_buf(),
        pod,
        ips,
        // The agent undoes anything it finishes after this.
        expires_at_ms: attach::monotonic_ms().saturating_add(timeout_ms.saturating_sub(200)),
    });
    match ask(conf, &req) {
        Ok(Reply::CniAdded(CniAdded::Registered { .. } | CniAdded::NotMeshed { .. })) => Ok(out),
        Ok(other) => Err(unexpected(inv, &other)),
        Err(e) => Err(agent_error(inv, conf, e, Code::TryAgainLater)),
    }
}

fn unexpected(inv: &Invocation, reply: &Reply) -> CniError {
    CniError::new(
        Code::TryAgainLater,
        format!(
            "{}: unexpected reply from the meshlane agent",
            inv.describe()
        ),
        format!("{reply:?}"),
    )
}

fn del(inv: &Invocation, conf: &PluginConf) -> Result<(), CniError> {
    let req = Request::CniDel(CniDel {
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
        netns: inv.netns.clone(),
    });
    match ask(conf, &req) {
        Ok(Reply::CniRemoved(_)) => Ok(()),
        Ok(other) => Err(unexpected(inv, &other)),
        Err(ApiError::Refused(why)) => Err(CniError::new(
            Code::RegistrationRefused,
            format!("{}: removing the registration failed", inv.describe()),
            why,
        )),
        Err(e) => {
            // Best effort: the agent's sweep removes the registration once
            // the pod's netns is gone.
            eprintln!("meshlane-cni: {}: DEL without the agent ({e}); its sweep will remove the registration", inv.describe());
            Ok(())
        }
    }
}

fn check(inv: &Invocation, conf: &PluginConf) -> Result<(), CniError> {
    prev_result(inv, conf)?;
    let netns = require_netns(inv)?;
    let pod = inv.pod();
    if pod.as_ref().is_some_and(|p| conf.excluded(&p.namespace)) {
        return Ok(());
    }
    let req = Request::CniCheck(CniCheck {
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
        netns: netns.to_path_buf(),
        pod,
    });
    match ask(conf, &req) {
        Ok(Reply::CniChecked) => Ok(()),
        Ok(other) => Err(unexpected(inv, &other)),
        Err(ApiError::Refused(why)) => Err(CniError::new(
            Code::RegistrationBroken,
            format!("{}: meshlane registration check failed", inv.describe()),
            why,
        )),
        Err(e) => Err(agent_error(inv, conf, e, Code::NotAvailable)),
    }
}

/// GC and STATUS exist from spec 1.1.0.
fn require_1_1(conf: &PluginConf, what: &str) -> Result<(), CniError> {
    if conf.version.has_gc_and_status() {
        return Ok(());
    }
    Err(CniError::new(
        Code::IncompatibleVersion,
        "incompatible CNI version",
        format!(
            "{what} needs cniVersion 1.1.0 or later, the configuration has {}",
            conf.cni_version
        ),
    ))
}

fn gc(conf: &PluginConf) -> Result<(), CniError> {
    require_1_1(conf, "GC")?;
    let req = Request::CniGc(CniGc {
        valid: conf.valid_attachments.clone().unwrap_or_default(),
    });
    match ask(conf, &req) {
        Ok(Reply::CniCollected(_)) => Ok(()),
        Ok(other) => Err(CniError::new(
            Code::NotAvailable,
            "GC: unexpected agent reply",
            format!("{other:?}"),
        )),
        Err(e) => Err(CniError::new(
            Code::NotAvailable,
            "GC: the meshlane agent could not collect",
            e.to_string(),
        )),
    }
}

fn status(conf: &PluginConf) -> Result<(), CniError> {
    require_1_1(conf, "STATUS")?;
    let short = Duration::from_secs(5).min(conf.agent_timeout);
    match api::call(&conf.agent_socket, &Request::CniStatus, short) {
        Ok(Reply::CniStatus(s)) if s.catalog_synced => Ok(()),
        Ok(Reply::CniStatus(_)) => Err(CniError::new(
            Code::NotAvailable,
            "the meshlane agent cannot serve ADD yet",
            "its pod source has not delivered its first complete listing",
        )),
        Ok(other) => Err(CniError::new(
            Code::NotAvailable,
            "meshlane agent not ready",
            format!("{other:?}"),
        )),
        Err(e) => Err(CniError::new(
            Code::NotAvailable,
            "the meshlane agent cannot serve ADD",
            e.to_string(),
        )),
    }
}
