//! Who may do what: the one permission check every transport's commands (and
//! `POST /publish`) pass through. Today the rules come from the server's
//! flags (`--deny-publish`); signed tokens will add per-channel rules here.

use crate::config::Config;

/// What a client asks permission for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
}

/// What one client may do.
#[derive(Debug, Clone)]
pub struct Permissions {
    publish: bool,
}

impl Permissions {
    /// A client that presented no credentials.
    pub fn anonymous(config: &Config) -> Permissions {
        Permissions { publish: !config.deny_publish }
    }

    pub fn allows(&self, action: Action, _name: &[u8]) -> bool {
        match action {
            Action::Publish => self.publish,
        }
    }
}
