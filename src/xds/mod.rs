//! The node's view of the mesh's control plane: what istiod sends each
//! meshed pod's sidecar, and what meshlane decides from it.
//!
//! - [`resources`]: one proxy's listeners, routes, clusters and endpoints
//!   (the decision engine's input, whether from a live ADS stream or from
//!   an Envoy config dump).
//! - [`held`], [`assignment`]: the compact forms resources are held in
//!   (clusters and listeners as wire bytes, endpoints as what the engine
//!   reads).
//! - [`client`]: the ADS client that receives them from istiod, one stream
//!   per meshed pod's proxy identity.
//! - [`dump`]: Envoy config dump JSON -> [`ProxyResources`].
//! - [`decide`]: the bypass decision engine (pure): BYPASS or SIDECAR for
//!   every outbound destination, with reasons and endpoints.
//! - [`typeurl`]: the typed-config types the engine recognises.
//!
//! Synchronous cores (resources, the decision engine, config dump parsing)
//! live beside the async shell (the ADS client) that feeds them.

pub mod assignment;
pub mod client;
pub mod decide;
pub mod dump;
pub mod held;
pub mod live;
pub mod resources;
pub mod typeurl;

pub use resources::ProxyResources;
