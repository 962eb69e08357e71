//! The JSON the gateway sends back, and the pieces of it that need care:
//! 64-bit integers as strings, bytes as base64, zero fields left out.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Bytes as the gateway writes them: standard base64.
pub(crate) fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// An int64 field: a JSON string of digits, or (from other gateways) a
/// number; missing means 0.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct I64(pub i64);

impl<'de> Deserialize<'de> for I64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = I64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a 64-bit integer, as a number or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<I64, E> {
                Ok(I64(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<I64, E> {
                i64::try_from(v)
                    .map(I64)
                    .map_err(|_| E::custom(format!("{v} does not fit an int64")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<I64, E> {
                v.parse()
                    .map(I64)
                    .map_err(|_| E::custom(format!("{v:?} is not an int64")))
            }
            fn visit_unit<E: de::Error>(self) -> Result<I64, E> {
                Ok(I64(0))
            }
        }
        d.deserialize_any(V)
    }
}

/// A uint64 field (member ids), like [`I64`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct U64(pub u64);

impl<'de> Deserialize<'de> for U64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = U64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a 64-bit unsigned integer, as a number or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<U64, E> {
                u64::try_from(v)
                    .map(U64)
                    .map_err(|_| E::custom(format!("{v} is negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<U64, E> {
                Ok(U64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<U64, E> {
                v.parse()
                    .map(U64)
                    .map_err(|_| E::custom(format!("{v:?} is not a uint64")))
            }
            fn visit_unit<E: de::Error>(self) -> Result<U64, E> {
                Ok(U64(0))
            }
        }
        d.deserialize_any(V)
    }
}

/// A bytes field: base64 text; missing means empty.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct B64(pub Vec<u8>);

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Option::<String>::deserialize(d)?.unwrap_or_default();
        STANDARD
            .decode(text.as_bytes())
            .map(B64)
            .map_err(|e| de::Error::custom(format!("bad base64: {e}")))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Header {
    pub revision: I64,
    #[serde(alias = "memberId")]
    pub member_id: U64,
    #[serde(alias = "raftTerm")]
    pub raft_term: U64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct KeyValue {
    pub key: B64,
    pub value: B64,
    #[serde(alias = "createRevision")]
    pub create_revision: I64,
    #[serde(alias = "modRevision")]
    pub mod_revision: I64,
    pub version: I64,
    pub lease: I64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct PutResponse {
    pub header: Header,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RangeResponse {
    pub header: Header,
    pub kvs: Vec<KeyValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct DeleteRangeResponse {
    pub header: Header,
    pub deleted: I64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ResponseOp {
    #[serde(alias = "responsePut")]
    pub response_put: Option<PutResponse>,
    #[serde(alias = "responseRange")]
    pub response_range: Option<RangeResponse>,
    #[serde(alias = "responseDeleteRange")]
    pub response_delete_range: Option<DeleteRangeResponse>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct TxnResponse {
    pub header: Header,
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct LeaseGrantResponse {
    #[serde(rename = "ID", alias = "id")]
    pub id: I64,
    #[serde(rename = "TTL", alias = "ttl")]
    pub ttl: I64,
    pub error: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct LeaseKeepAlive {
    #[serde(rename = "TTL", alias = "ttl")]
    pub ttl: I64,
}

/// `/v3/lease/keepalive` streams: each reply is `{"result": ...}` or
/// `{"error": ...}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct LeaseKeepAliveStream {
    pub result: Option<LeaseKeepAlive>,
    pub error: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct StatusResponse {
    pub header: Header,
    pub version: String,
    #[serde(rename = "dbSize", alias = "db_size")]
    pub db_size: I64,
    pub leader: U64,
    #[serde(rename = "raftIndex", alias = "raft_index")]
    pub raft_index: U64,
    #[serde(rename = "raftTerm", alias = "raft_term")]
    pub raft_term: U64,
    pub errors: Vec<String>,
}

/// The message in an error body: `{"error": "...", "message": "...",
/// "code": N}` from unary calls, `{"error": {"message": ..}}` from streams,
/// or plain text.
pub(crate) fn error_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let from_json = parsed.as_ref().and_then(|v| {
        let direct = v.get("message").and_then(|m| m.as_str());
        let nested = v
            .get("error")
            .and_then(|e| e.get("message").or(Some(e)))
            .and_then(|m| m.as_str());
        direct.or(nested).map(str::to_string)
    });
    let text = from_json.unwrap_or_else(|| body.to_string());
    one_line(&text, 200)
}

/// `text` on one line, whitespace runs folded, at most `max` characters.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if folded.chars().count() <= max {
        return folded;
    }
    let mut cut: String = folded.chars().take(max).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_as_strings_numbers_or_missing() {
        let kv: KeyValue = serde_json::from_str(
            r#"{"key":"YQ==","create_revision":"7","mod_revision":9,"lease":null}"#,
        )
        .unwrap();
        assert_eq!(kv.key.0, b"a");
        assert_eq!(kv.value.0, b"");
        assert_eq!(kv.create_revision, I64(7));
        assert_eq!(kv.mod_revision, I64(9));
        assert_eq!(kv.version, I64(0));
        assert_eq!(kv.lease, I64(0));
        assert!(serde_json::from_str::<KeyValue>(r#"{"version":"x"}"#).is_err());
        assert!(serde_json::from_str::<KeyValue>(r#"{"key":"%%"}"#).is_err());
        let s: StatusResponse =
            serde_json::from_str(r#"{"leader":"13668033151171901709","dbSize":"20480"}"#).unwrap();
        assert_eq!(s.leader, U64(13668033151171901709));
        assert_eq!(s.db_size, I64(20480));
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            error_message(r#"{"error":"e: x","message":"e: x","code":5}"#),
            "e: x"
        );
        assert_eq!(
            error_message(r#"{"error":{"grpc_code":5,"message":"gone"}}"#),
            "gone"
        );
        assert_eq!(error_message("Not Found\n"), "Not Found");
        assert_eq!(one_line("a\n b", 10), "a b");
        assert_eq!(one_line("abcdef", 3), "abc…");
    }
}
