//! One ADS stream's state of the world protocol, without I/O: per type, the
//! names the client subscribed to, the last nonce and version sent and
//! what it acknowledged. The server feeds it requests and new snapshots and
//! sends what it returns.
//!
//! The rules (xDS protocol, "ACK and NACK semantics"): a request with no
//! response nonce subscribes; one whose nonce is not the last one sent for
//! its type is stale and ignored; one with the last nonce and an
//! `error_detail` is a NACK (its `version_info` is the last version the
//! client accepted; the rejected config is not sent again), without one an
//! ACK. An ACK that changes the subscribed names, or comes while a newer
//! snapshot exists, is answered with the current resources.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::snapshot::Snapshot;

/// What one request was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// First request for the type on this stream (no nonce); `version` is
    /// what a resuming client already holds ("" on a first connect).
    Subscribe { version: String, names: Vec<String> },
    /// The client applied the response with `nonce`.
    Ack { version: String, nonce: String },
    /// The client rejected the response with `nonce`; `version` is what it
    /// still runs.
    Nack {
        version: String,
        nonce: String,
        message: String,
    },
    /// An answer to a response that is no longer the latest: ignored.
    Stale { nonce: String },
}

#[derive(Debug, Default)]
struct TypeState {
    names: Vec<String>,
    last_nonce: String,
    sent_version: Option<String>,
}

/// The protocol state of one stream.
#[derive(Debug, Default)]
pub struct StreamState {
    nonces: u64,
    types: BTreeMap<String, TypeState>,
}

fn same_names(a: &[String], b: &[String]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort();
    b.sort();
    a == b
}

impl StreamState {
    /// Classifies `req` and returns the response to send, if any.
    pub fn on_request(
        &mut self,
        req: &DiscoveryRequest,
        snap: &Snapshot,
    ) -> (Verdict, Option<DiscoveryResponse>) {
        let ts = self.types.entry(req.type_url.clone()).or_default();
        if req.response_nonce.is_empty() {
            ts.names = req.resource_names.clone();
            let verdict = Verdict::Subscribe {
                version: req.version_info.clone(),
                names: ts.names.clone(),
            };
            return (verdict, Some(self.respond(&req.type_url, snap)));
        }
        if req.response_nonce != ts.last_nonce {
            let nonce = req.response_nonce.clone();
            return (Verdict::Stale { nonce }, None);
        }
        if let Some(err) = &req.error_detail {
            let verdict = Verdict::Nack {
                version: req.version_info.clone(),
                nonce: req.response_nonce.clone(),
                message: err.message.clone(),
            };
            return (verdict, None);
        }
        let verdict = Verdict::Ack {
            version: req.version_info.clone(),
            nonce: req.response_nonce.clone(),
        };
        let renamed = !same_names(&ts.names, &req.resource_names);
        let behind = ts.sent_version.as_deref() != Some(snap.version_of(&req.type_url));
        if renamed {
            ts.names = req.resource_names.clone();
        }
        let response = (renamed || behind).then(|| self.respond(&req.type_url, snap));
        (verdict, response)
    }

    /// Responses for every subscribed type not yet sent its version in
    /// `snap`.
    pub fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<DiscoveryResponse> {
        let behind: Vec<String> = self
            .types
            .iter()
            .filter(|(t, ts)| ts.sent_version.as_deref() != Some(snap.version_of(t)))
            .map(|(t, _)| t.clone())
            .collect();
        behind.iter().map(|t| self.respond(t, snap)).collect()
    }

    fn respond(&mut self, type_url: &str, snap: &Snapshot) -> DiscoveryResponse {
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let ts = self.types.entry(type_url.to_string()).or_default();
        ts.last_nonce = nonce.clone();
        let version = snap.version_of(type_url).to_string();
        ts.sent_version = Some(version.clone());
        DiscoveryResponse {
            version_info: version,
            resources: snap.select(type_url, &ts.names),
            type_url: type_url.to_string(),
            nonce,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::google::rpc::Status;
    use prost::Name;

    use super::*;

    fn snap(version: &str) -> Snapshot {
        let mut s = Snapshot::new(version);
        for name in ["a", "b"] {
            let c = Cluster {
                name: name.into(),
                ..Default::default()
            };
            s.add(name, &c);
            let cla = ClusterLoadAssignment {
                cluster_name: name.into(),
                ..Default::default()
            };
            s.add(name, &cla);
        }
        s
    }

    fn req(type_url: &str, version: &str, nonce: &str, names: &[&str]) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn subscribe_ack_nack_and_stale_follow_the_nonces() {
        let (cds, eds) = (Cluster::type_url(), ClusterLoadAssignment::type_url());
        let mut st = StreamState::default();
        let v1 = snap("1");
        let (v, r) = st.on_request(&req(&cds, "", "", &[]), &v1);
        assert_eq!(
            v,
            Verdict::Subscribe {
                version: String::new(),
                names: vec![]
            }
        );
        let r = r.expect("subscribing is answered");
        assert_eq!((r.version_info.as_str(), r.resources.len()), ("1", 2));
        let n1 = r.nonce.clone();
        // EDS for one cluster: only that one.
        let (_, r) = st.on_request(&req(&eds, "", "", &["b"]), &v1);
        let r = r.expect("EDS answered");
        assert_eq!(r.resources.len(), 1);
        assert_ne!(r.nonce, n1, "nonces are unique on the stream");
        let n_eds = r.nonce;
        // ACK of the current version: nothing more to send.
        let (v, r) = st.on_request(&req(&cds, "1", &n1, &[]), &v1);
        assert_eq!(
            v,
            Verdict::Ack {
                version: "1".into(),
                nonce: n1.clone()
            }
        );
        assert!(r.is_none());
        // A new snapshot goes to both subscribed types.
        let v2 = snap("2");
        let pushed = st.on_snapshot(&v2);
        assert_eq!(pushed.len(), 2);
        assert!(pushed.iter().all(|p| p.version_info == "2"));
        let n2 = pushed
            .iter()
            .find(|p| p.type_url == cds)
            .unwrap()
            .nonce
            .clone();
        // The EDS ACK of the old nonce is now stale.
        let (v, r) = st.on_request(&req(&eds, "1", &n_eds, &["b"]), &v2);
        assert_eq!(v, Verdict::Stale { nonce: n_eds });
        assert!(r.is_none());
        // NACK: logged, the rejected version is not sent again.
        let mut nack = req(&cds, "1", &n2, &[]);
        nack.error_detail = Some(Status {
            code: 3,
            message: "bad cluster".into(),
            ..Default::default()
        });
        let (v, r) = st.on_request(&nack, &v2);
        assert_eq!(
            v,
            Verdict::Nack {
                version: "1".into(),
                nonce: n2,
                message: "bad cluster".into()
            }
        );
        assert!(r.is_none());
        assert!(st.on_snapshot(&v2).is_empty(), "v2 was already sent");
    }

    #[test]
    fn an_ack_that_changes_the_names_gets_the_new_set() {
        let eds = ClusterLoadAssignment::type_url();
        let mut st = StreamState::default();
        let v1 = snap("1");
        let (_, r) = st.on_request(&req(&eds, "", "", &["a"]), &v1);
        let n = r.unwrap().nonce;
        let (v, r) = st.on_request(&req(&eds, "1", &n, &["a", "b"]), &v1);
        assert!(matches!(v, Verdict::Ack { .. }));
        let r = r.expect("new names are answered");
        assert_eq!(r.resources.len(), 2);
        // The same names in another order are no change.
        let (_, r) = st.on_request(&req(&eds, "1", &r.nonce, &["b", "a"]), &v1);
        assert!(r.is_none());
    }
}
