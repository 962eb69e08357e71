//! Ids and time. (The node logs through `tracing`; the binary installs a
//! subscriber that writes one JSON object a line on stderr.)

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh random-looking id of 12 hex digits.
pub fn new_id(salt: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let h = blake3::hash(format!("{nanos}-{}-{salt}", std::process::id()).as_bytes());
    tern_prepare::hex(&h.as_bytes()[..6])
}
