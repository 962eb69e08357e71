//! The node's one error type. Each kind maps to one HTTP status, in one
//! place ([`Error::status`]); the message is the one line the caller sees.

use std::fmt;

/// Why the node refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The request names a guest, migration or module the node does not
    /// have (404).
    NotFound(String),
    /// The request itself is wrong: bad body, bad module, a limit asked
    /// beyond the node's (400).
    BadRequest(String),
    /// The request conflicts with where the guest stands: not running,
    /// already here (409).
    Conflict(String),
    /// Another node the request needs could not be reached (502).
    Upstream(String),
    /// The node failed on its side: disk, an internal error (500).
    Internal(String),
}

impl Error {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Error::NotFound(_) => 404,
            Error::BadRequest(_) => 400,
            Error::Conflict(_) => 409,
            Error::Upstream(_) => 502,
            Error::Internal(_) => 500,
        }
    }

    /// The one-line message.
    pub fn message(&self) -> &str {
        match self {
            Error::NotFound(m)
            | Error::BadRequest(m)
            | Error::Conflict(m)
            | Error::Upstream(m)
            | Error::Internal(m) => m,
        }
    }

    /// No guest `id` runs here.
    pub fn no_guest(id: &str) -> Error {
        Error::NotFound(format!("no guest {id} on this node"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

/// The node's own failures (disk, registry) are internal errors.
impl From<String> for Error {
    fn from(s: String) -> Error {
        Error::Internal(s)
    }
}
