//! The CNI side of meshlane: everything the `meshlane-cni` chained plugin
//! and the agent's handling of its requests share, per the CNI spec
//! (https://github.com/containernetworking/cni, SPEC.md, versions 0.3.1 to
//! 1.1.0).
//!
//! - [`version`]: the spec versions the plugin speaks, VERSION's answer;
//! - [`error`]: CNI error objects with the spec's codes;
//! - [`conf`]: the plugin's network configuration (stdin) and its keys;
//! - [`invocation`]: the `CNI_*` environment and `CNI_ARGS`;
//! - [`result`]: reading `prevResult` (the pod's IPs) and passing it on;
//! - [`attach`]: the agent's side: CNI attachments to pod registrations,
//!   the container id mapping that survives agent restarts;
//! - [`install`]: `meshlane install-cni`, the plugin's entry in the
//!   node's conflist.
//!
//! Everything here but `attach` and `install`'s file writes is pure.

pub mod attach;
pub mod conf;
pub mod error;
pub mod install;
pub mod invocation;
pub mod result;
pub mod version;

pub use conf::PluginConf;
pub use error::{CniError, Code};
pub use invocation::{Command, Invocation};

/// The plugin's binary name, which is also its `type` in a conflist.
pub const PLUGIN_TYPE: &str = "meshlane-cni";
