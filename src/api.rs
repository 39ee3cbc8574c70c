//! The agent's local API: a small versioned request/response protocol over
//! a unix socket, one JSON object per line each way, one request per
//! connection. `meshlane pod add|rm|list|sweep` use it while an agent runs
//! (the agent is then the one writer of the pod registry). With no agent
//! listening, the CLI does the same work itself under the registry lock
//! ([`handle`] is the one code path).
//!
//! The CNI plugin (`meshlane-cni`) speaks the same protocol version with
//! its own operations (`cni_add`, `cni_del`, `cni_check`, `cni_gc`,
//! `cni_status`), served only by a running agent (they need its pod
//! catalog): see [`crate::cni::attach`].
//!
//! The socket's path follows from the pin root (see [`socket_path`]), so a
//! CLI and an agent on the same pin root always meet.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cni::attach::{
    CniAdd, CniAdded, CniCheck, CniDel, CniGc, CniRemoved, CniService, CniStatus,
};
use crate::cni::conf::ValidAttachment;
use crate::integrity;
use crate::layout::PinLayout;
use crate::loader;
use crate::pods::source::PodKey;
use crate::pods::{PodRecord, PodSpec, Registry, Swept};
use crate::xds::live::{LiveDecisions, PodExplained};

/// Version of the protocol; a peer that speaks another is refused.
pub const API_VERSION: u32 = 1;

/// Directory of the agents' sockets.
pub const SOCKET_DIR: &str = "/run/meshlane";

/// The API socket of the agent that owns `pin_root`:
/// `/run/meshlane/<pin root with '/' as '-'>.sock`.
pub fn socket_path(pin_root: &Path) -> PathBuf {
    let flat: String = pin_root
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| if c == '/' { '-' } else { c })
        .collect();
    Path::new(SOCKET_DIR).join(format!("{flat}.sock"))
}

/// Which pod `rm` removes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodRef {
    Netns(PathBuf),
    Cookie(u64),
    Name(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Add {
        netns: PathBuf,
        spec: PodSpec,
    },
    Rm {
        pod: PodRef,
    },
    List,
    Sweep,
    #[serde(rename = "cni_add")]
    CniAdd(CniAdd),
    #[serde(rename = "cni_del")]
    CniDel(CniDel),
    #[serde(rename = "cni_check")]
    CniCheck(CniCheck),
    #[serde(rename = "cni_gc")]
    CniGc(CniGc),
    #[serde(rename = "cni_status")]
    CniStatus,
    /// `meshlane explain --pod`: the pod's live bypass decisions (served
    /// only by an agent running the xDS client).
    Explain {
        pod: PodKey,
    },
}

impl Request {
    /// Whether this is one of the CNI plugin's requests.
    pub fn is_cni(&self) -> bool {
        matches!(
            self,
            Request::CniAdd(_)
                | Request::CniDel(_)
                | Request::CniCheck(_)
                | Request::CniGc(_)
                | Request::CniStatus
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    Added(PodRecord),
    Removed(u64),
    Pods(Vec<PodRecord>),
    Swept(Vec<Swept>),
    #[serde(rename = "cni_added")]
    CniAdded(CniAdded),
    #[serde(rename = "cni_removed")]
    CniRemoved(CniRemoved),
    #[serde(rename = "cni_checked")]
    CniChecked,
    #[serde(rename = "cni_collected")]
    CniCollected(Vec<ValidAttachment>),
    #[serde(rename = "cni_status")]
    CniStatus(CniStatus),
    Explained(Box<PodExplained>),
}

#[derive(Debug, Serialize, Deserialize)]
struct RequestEnvelope {
    version: u32,
    request: Request,
}

#[derive(Debug, Serialize, Deserialize)]
struct ReplyEnvelope {
    version: u32,
    #[serde(flatten)]
    result: ApiResult,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ApiResult {
    Ok(Reply),
    Error(String),
}

#[derive(Debug, Error)]
pub enum ApiError {
    /// No agent listens: the caller may do the work itself.
    #[error("no agent listens on {0}")]
    NoAgent(PathBuf),
    #[error("agent API {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent API {path}: bad reply: {why}")]
    Protocol { path: PathBuf, why: String },
    /// The agent did the request and refused it: its one-line reason.
    #[error("{0}")]
    Refused(String),
}

const CNI_NEEDS_AGENT: &str = "CNI requests are served only by a running agent";
const EXPLAIN_NEEDS_AGENT: &str = "explain --pod is served only by a running agent";
const BYPASS_DISABLED: &str = "bypass is disabled in this agent (bypass.enabled is false or xds.address is unset): no live decisions";

/// What a running agent serves beyond [`handle`].
#[derive(Clone, Copy, Default)]
pub struct AgentServices<'a> {
    /// The CNI plugin's requests.
    pub cni: Option<&'a CniService>,
    /// `explain --pod` (None: bypass disabled).
    pub decisions: Option<&'a LiveDecisions>,
}

/// Does one request: the synchronous core behind both the agent's server
/// and the CLI's direct mode. Errors are one line naming what was wrong.
pub fn handle(layout: &PinLayout, req: Request) -> Result<Reply, String> {
    if req.is_cni() {
        return Err(CNI_NEEDS_AGENT.into());
    }
    if matches!(req, Request::Explain { .. }) {
        return Err(EXPLAIN_NEEDS_AGENT.into());
    }
    let reg = Registry::open(layout).map_err(|e| e.to_string())?;
    match req {
        Request::Add { netns, spec } => {
            if spec.splice_apps {
                require_safe_app_hops(layout)?;
            }
            reg.add(&netns, &spec).map(Reply::Added)
        }
        Request::Rm { pod } => match pod {
            PodRef::Netns(p) => reg.remove(&p),
            PodRef::Cookie(c) => reg.remove_cookie(c, &format!("netns cookie {c}")),
            PodRef::Name(n) => reg.remove_named(&n),
        }
        .map(Reply::Removed),
        Request::List => Ok(Reply::Pods(reg.list())),
        Request::Sweep => {
            return match crate::pods::sweep(&reg) {
                Ok(Some(s)) => Ok(Reply::Swept(s)),
                Ok(None) => {
                    Err("the pod registry is busy (an add or remove is running): try again".into())
                }
                Err(e) => Err(e.to_string()),
            }
        }
        Request::CniAdd(_)
        | Request::CniDel(_)
        | Request::CniCheck(_)
        | Request::CniGc(_)
        | Request::CniStatus => return Err(CNI_NEEDS_AGENT.into()),
        Request::Explain { .. } => return Err(EXPLAIN_NEEDS_AGENT.into()),
    }
    .map_err(|e| e.to_string())
}

/// Does one request in the agent: CNI requests go to its CNI service,
/// `explain` to its live decisions, the others to [`handle`].
pub fn dispatch(
    layout: &PinLayout,
    agent: Option<AgentServices<'_>>,
    req: Request,
) -> Result<Reply, String> {
    let Some(agent) = agent else {
        return handle(layout, req);
    };
    if let Request::Explain { pod } = &req {
        let live = agent.decisions.ok_or(BYPASS_DISABLED)?;
        return live
            .explain(pod)
            .map(|e| Reply::Explained(Box::new(e)))
            .map_err(|e| e.to_string());
    }
    let Some(cni) = agent.cni else {
        return handle(layout, req);
    };
    match req {
        Request::CniAdd(r) => cni.add(&r).map(Reply::CniAdded),
        Request::CniDel(r) => cni.del(&r).map(Reply::CniRemoved),
        Request::CniCheck(r) => cni.check(&r).map(|()| Reply::CniChecked),
        Request::CniGc(r) => cni.gc(&r).map(Reply::CniCollected),
        Request::CniStatus => cni.status().map(Reply::CniStatus),
        other => handle(layout, other),
    }
}

/// `--splice-apps` only where the kernel probes allow it, given whether the
/// installed data path has the stream verdict attached.
fn require_safe_app_hops(layout: &PinLayout) -> Result<(), String> {
    let facts =
        loader::kernel_facts().map_err(|e| format!("probing the kernel for --splice-apps: {e}"))?;
    let plan = integrity::Plan {
        verdict: crate::datapath::links::is_pinned(layout, crate::datapath::LinkId::SpliceVerdict),
        splice: true,
        warnings: Vec::new(),
    };
    integrity::app_hops_allowed(&facts, &plan).map_err(|e| format!("--splice-apps: {e}"))
}

/// Sends `req` to the agent at `socket` and waits for its reply.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Reply, ApiError> {
    let io = |source| ApiError::Io {
        path: socket.into(),
        source,
    };
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ApiError::NoAgent(socket.into()))
        }
        Err(e) => return Err(io(e)),
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let line = serde_json::to_string(&RequestEnvelope {
        version: API_VERSION,
        request: req.clone(),
    })
    .map_err(|e| io(std::io::Error::other(e)))?;
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).map_err(io)?;
    let bad = |why: String| ApiError::Protocol {
        path: socket.into(),
        why,
    };
    let env: ReplyEnvelope = serde_json::from_str(&reply).map_err(|e| bad(e.to_string()))?;
    if env.version != API_VERSION {
        return Err(bad(format!(
            "version {}, this build speaks {API_VERSION}",
            env.version
        )));
    }
    match env.result {
        ApiResult::Ok(r) => Ok(r),
        ApiResult::Error(e) => Err(ApiError::Refused(e)),
    }
}

/// The server side of one connection's line: parses, runs `handle`, and
/// renders the reply line (errors included; never panics on input).
pub fn serve_line(layout: &PinLayout, line: &str) -> String {
    serve_line_with(layout, None, line)
}

/// [`serve_line`] in an agent that serves CNI and explain requests.
pub fn serve_line_with(layout: &PinLayout, agent: Option<AgentServices<'_>>, line: &str) -> String {
    let result = match serde_json::from_str::<RequestEnvelope>(line) {
        Ok(env) if env.version == API_VERSION => match dispatch(layout, agent, env.request) {
            Ok(r) => ApiResult::Ok(r),
            Err(e) => ApiResult::Error(e),
        },
        Ok(env) => ApiResult::Error(format!(
            "API version {} is not spoken here (this agent speaks {API_VERSION})",
            env.version
        )),
        Err(e) => ApiResult::Error(format!("bad request: {e}")),
    };
    let env = ReplyEnvelope {
        version: API_VERSION,
        result,
    };
    serde_json::to_string(&env).unwrap_or_else(|e| {
        format!("{{\"version\":{API_VERSION},\"error\":\"rendering the reply: {e}\"}}")
    }) + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_path_follows_the_pin_root() {
        assert_eq!(
            socket_path(Path::new("/sys/fs/bpf/meshlane")),
            Path::new("/run/meshlane/sys-fs-bpf-meshlane.sock")
        );
    }

    #[test]
    fn bad_lines_get_an_error_reply_naming_the_problem() {
        let layout = PinLayout::new("/nonexistent/pin/root");
        for (line, want) in [
            ("not json", "bad request"),
            (r#"{"version":7,"request":{"op":"list"}}"#, "version 7"),
            (r#"{"version":1,"request":{"op":"explode"}}"#, "explode"),
        ] {
            let out = serve_line(&layout, line);
            let env: ReplyEnvelope = serde_json::from_str(&out).expect(&out);
            match env.result {
                ApiResult::Error(e) => assert!(e.contains(want), "{line}: {e}"),
                ApiResult::Ok(r) => panic!("{line}: accepted: {r:?}"),
            }
        }
    }

    #[test]
    fn cni_requests_have_their_own_ops_and_need_an_agent() {
        let line = r#"{"version":1,"request":{"op":"cni_del","container_id":"abc","ifname":"eth0","netns":null}}"#;
        let env: RequestEnvelope = serde_json::from_str(line).unwrap();
        assert!(matches!(env.request, Request::CniDel(ref d) if d.container_id == "abc"));
        let out = serve_line(&PinLayout::new("/nonexistent/pin/root"), line);
        assert!(out.contains("only by a running agent"), "{out}");
    }

    #[test]
    fn explain_needs_an_agent_with_bypass_enabled() {
        let layout = PinLayout::new("/nonexistent/pin/root");
        let req = || Request::Explain {
            pod: PodKey {
                namespace: "default".into(),
                name: "web".into(),
            },
        };
        let line = serde_json::to_string(&RequestEnvelope {
            version: API_VERSION,
            request: req(),
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"version":1,"request":{"op":"explain","pod":{"namespace":"default","name":"web"}}}"#
        );
        assert_eq!(handle(&layout, req()).unwrap_err(), EXPLAIN_NEEDS_AGENT);
        let agent = AgentServices::default();
        let e = dispatch(&layout, Some(agent), req()).unwrap_err();
        assert!(e.contains("bypass is disabled"), "{e}");
    }

    #[test]
    fn requests_round_trip() {
        let req = Request::Rm {
            pod: PodRef::Cookie(42),
        };
        let line = serde_json::to_string(&RequestEnvelope {
            version: API_VERSION,
            request: req,
        })
        .unwrap();
        let back: RequestEnvelope = serde_json::from_str(&line).unwrap();
        assert!(matches!(
            back.request,
            Request::Rm {
                pod: PodRef::Cookie(42)
            }
        ));
    }
}
