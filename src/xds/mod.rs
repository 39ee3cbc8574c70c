//! The node's view of the mesh's control plane: what istiod sends each
//! meshed pod's sidecar, and what meshlane decides from it.
//!
//! - [`resources`]: one proxy's listeners, routes, clusters and endpoints
//!   (the decision engine's input, whether from a live ADS stream or from
//!   an Envoy config dump).
//! - [`client`]: the ADS client that receives them from istiod, one stream
//!   per meshed pod's proxy identity.
//!
//! Synchronous cores (resources, the decision engine, config dump parsing)
//! live beside the async shell (the ADS client) that feeds them.

pub mod client;
pub mod resources;

pub use resources::ProxyResources;
