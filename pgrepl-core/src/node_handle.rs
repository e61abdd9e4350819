//! [`NodeHandle`]: a node ready to act on, its transport and its layout. Re-exported as
//! [`provider::NodeHandle`](crate::provider::NodeHandle), where a
//! [`Connector`](crate::provider::Connector) makes one; it lives below the provider so that
//! [`observe`](crate::observe) (and through it the planners, whose refusals
//! [`Error`](crate::Error) wraps) can read nodes without depending on the provider and its
//! errors.

use std::sync::Arc;

use crate::layout::NodeLayout;
use crate::transport::Transport;

/// A node ready to act on.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    /// The node's name.
    pub name: String,
    /// How to act on its host.
    pub transport: Arc<dyn Transport>,
    /// Its paths and tools on that host.
    pub layout: NodeLayout,
    /// A script (run as root) that installs the PostgreSQL binaries the layout names,
    /// for hosts where they are missing; `None` where pgrepl does not install.
    pub install_script: Option<String>,
}
