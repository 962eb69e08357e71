//! Bearer tokens, for scripts that hold no client certificate.
//!
//! A node's token file (`tern node --token-file FILE`) has one token a
//! line, `ROLE TOKEN` (role `admin` or `read`); blank lines and lines
//! starting with `#` are skipped. A client's token file holds its token
//! alone (or a `ROLE TOKEN` line: the last word is the token).

use std::path::Path;

use crate::{bad, Identity, Role, TlsError};

/// The tokens a node accepts.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<(Role, String)>,
}

/// Tokens shorter than this are refused: they could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    /// Reads a node's token file.
    pub fn load(path: &Path) -> Result<Tokens, TlsError> {
        let text = std::fs::read_to_string(path).map_err(|source| TlsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Tokens::parse(&text).map_err(|e| bad(format!("{}: {e}", path.display())))
    }

    /// Parses a node's token file.
    pub fn parse(text: &str) -> Result<Tokens, TlsError> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(role), Some(token), None) = (words.next(), words.next(), words.next()) else {
                return Err(bad(format!("line {}: expected `ROLE TOKEN`", i + 1)));
            };
            let role: Role = role
                .parse()
                .map_err(|e| bad(format!("line {}: {e}", i + 1)))?;
            if role.serves() {
                return Err(bad(format!(
                    "line {}: {role}s authenticate with certificates, not tokens",
                    i + 1
                )));
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(bad(format!(
                    "line {}: token shorter than {MIN_TOKEN_LEN} characters",
                    i + 1
                )));
            }
            entries.push((role, token.to_string()));
        }
        Ok(Tokens { entries })
    }

    /// Who holds `token`, if anyone. Compares every entry in full, in time
    /// that does not depend on where a guess first differs.
    pub fn check(&self, token: &str) -> Option<Identity> {
        let mut found = None;
        for (i, (role, t)) in self.entries.iter().enumerate() {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(Identity {
                    name: format!("token-{}", i + 1),
                    role: *role,
                });
            }
        }
        found
    }

    /// No tokens at all?
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a client's token file: its last word.
pub fn read_client_token(path: &Path) -> Result<String, TlsError> {
    let text = std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().last())
        .map(str::to_string)
        .ok_or_else(|| bad(format!("{}: holds no token", path.display())))
}

/// A fresh random token: 32 bytes from the system's generator, hex.
pub fn generate() -> Result<String, TlsError> {
    let mut bytes = [0u8; 32];
    crate::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| bad("no randomness available"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
