//! Tern's cluster security: one certificate authority per cluster, a
//! certificate per node and per client, mutual TLS between all of them, and
//! bearer tokens for scripts.
//!
//! A *cluster directory* holds PEM files:
//!
//! | file | what |
//! |---|---|
//! | `ca.crt`, `ca.key` | the cluster CA (`tern certs init`); keep `ca.key` off the nodes |
//! | `node-NAME.crt`, `node-NAME.key` | node `NAME` (`tern certs node NAME`) |
//! | `client-NAME.crt`, `client-NAME.key` | client `NAME` (`tern certs client NAME`) |
//!
//! A certificate's subject says who its holder is: the common name is the
//! holder's name and the organizational unit its [`Role`]. Peers are
//! accepted only with a certificate that chains to the cluster CA and is
//! valid now; the name in a node's certificate is the identity the migration
//! handshake checks, so a node cannot present itself as another.

pub mod issue;
pub mod token;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use rustls;

/// What a certificate's holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A node: serves guests, sends and receives migrations; reads other
    /// nodes' APIs.
    Node,
    /// A client with every right on the API.
    Admin,
    /// A client that may only read (list guests, logs, metrics).
    Read,
    /// A controller: serves its own API to clients and nodes, and moves
    /// guests between nodes (every right on a node's API).
    Controller,
}

impl Role {
    /// The organizational unit a certificate of this role carries.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Admin => "admin",
            Role::Read => "read",
            Role::Controller => "controller",
        }
    }

    /// May this role change state (start, stop, move guests)?
    pub fn may_write(self) -> bool {
        matches!(self, Role::Admin | Role::Controller)
    }

    /// Does a holder of this role serve an API (its certificate is a
    /// server's as well as a client's)?
    pub fn serves(self) -> bool {
        matches!(self, Role::Node | Role::Controller)
    }
}

impl std::str::FromStr for Role {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Role, TlsError> {
        match s {
            "node" => Ok(Role::Node),
            "admin" => Ok(Role::Admin),
            "read" => Ok(Role::Read),
            "controller" => Ok(Role::Controller),
            other => Err(TlsError::Bad(format!(
                "unknown role {other:?} (expected admin or read)"
            ))),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a peer is, as its certificate (or token) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Node or client name.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// What can go wrong loading or making certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Anything else, said in one line.
    #[error("{0}")]
    Bad(String),
}

fn bad(msg: impl std::fmt::Display) -> TlsError {
    TlsError::Bad(msg.to_string())
}

/// Checks a node or client name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn check_name(name: &str) -> Result<(), TlsError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "bad name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-'"
        )))
    }
}

/// The crypto Tern uses: ring's, TLS 1.3 only, AES-128-GCM first (the
/// fastest where the CPU has AES instructions, which migrations feel; the
/// peer picks ChaCha20-Poly1305 where it has none).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn certs_in(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("{}: not a PEM certificate: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(bad(format!("{}: holds no certificate", path.display())));
    }
    Ok(certs)
}

/// Reads who a certificate says its holder is.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, TlsError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| bad(format!("unreadable certificate: {e}")))?;
    let subject = x509.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or_else(|| bad("certificate without a common name"))?;
    let role = subject
        .iter_organizational_unit()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or_else(|| bad("certificate without a role (organizational unit)"))?;
    let role = match role {
        "node" => Role::Node,
        "admin" => Role::Admin,
        "read" => Role::Read,
        "controller" => Role::Controller,
        other => return Err(bad(format!("certificate with unknown role {other:?}"))),
    };
    Ok(Identity {
        name: name.to_string(),
        role,
    })
}

/// The identity of the peer of an established connection, if it presented
/// a certificate (the handshake already checked it against the CA).
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<Identity> {
    certs
        .and_then(|c| c.first())
        .and_then(|c| identity_of(c).ok())
}

/// Whether servers insist on a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every peer must present one (the migration port).
    Required,
    /// A peer may come without one and authenticate with a token (the API).
    Optional,
}

/// One holder's certificate, key and cluster CA, ready to make TLS
/// configurations.
pub struct Material {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: Identity,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Material {
    /// Node `name`'s material in cluster directory `dir`.
    pub fn load_node(dir: &Path, name: &str) -> Result<Material, TlsError> {
        Material::load_server(dir, Role::Node, name)
    }

    /// Controller `name`'s material in cluster directory `dir`.
    pub fn load_controller(dir: &Path, name: &str) -> Result<Material, TlsError> {
        Material::load_server(dir, Role::Controller, name)
    }

    /// The material of server `name` in `role` (`ROLE-NAME.crt`), refused
    /// unless its certificate says that role and name.
    fn load_server(dir: &Path, role: Role, name: &str) -> Result<Material, TlsError> {
        check_name(name)?;
        let stem = format!("{role}-{name}");
        let m = Material::load(dir, &stem)?;
        if m.identity.role != role || m.identity.name != name {
            return Err(bad(format!(
                "{}: is {}'s {} certificate, not {role} {name}'s",
                dir.join(format!("{stem}.crt")).display(),
                m.identity.name,
                m.identity.role
            )));
        }
        Ok(m)
    }

    /// Client `name`'s material in `dir`; with no name, the only client
    /// certificate there.
    pub fn load_client(dir: &Path, name: Option<&str>) -> Result<Material, TlsError> {
        let name = match name {
            Some(n) => n.to_string(),
            None => only_client(dir)?,
        };
        check_name(&name)?;
        let m = Material::load(dir, &format!("client-{name}"))?;
        if m.identity.role.serves() {
            return Err(bad(format!(
                "client-{name}.crt is a {} certificate",
                m.identity.role
            )));
        }
        Ok(m)
    }

    fn load(dir: &Path, stem: &str) -> Result<Material, TlsError> {
        let ca = certs_in(&dir.join("ca.crt"))?.remove(0);
        let chain = certs_in(&dir.join(format!("{stem}.crt")))?;
        let key_path = dir.join(format!("{stem}.key"));
        let key = PrivateKeyDer::from_pem_slice(&read(&key_path)?).map_err(|e| {
            bad(format!(
                "{}: not a PEM private key: {e}",
                key_path.display()
            ))
        })?;
        let identity = identity_of(&chain[0])?;
        Ok(Material {
            ca,
            chain,
            key,
            identity,
        })
    }

    /// Who this material makes its holder.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .map_err(|e| bad(format!("ca.crt is not a usable CA certificate: {e}")))?;
        Ok(Arc::new(roots))
    }

    /// A server configuration: presents this certificate and accepts
    /// clients whose certificate the cluster CA signed.
    pub fn server_config(&self, auth: ClientAuth) -> Result<Arc<ServerConfig>, TlsError> {
        let builder =
            rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, provider());
        let builder = match auth {
            ClientAuth::Required => builder,
            ClientAuth::Optional => builder.allow_unauthenticated(),
        };
        let verifier = builder.build().map_err(bad)?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(bad)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| bad(format!("certificate and key do not go together: {e}")))?;
        Ok(Arc::new(config))
    }

    /// A client configuration: presents this certificate and accepts only
    /// servers holding a node's or a controller's certificate the cluster
    /// CA signed.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let verifier = Arc::new(verify::NodeVerifier::new(self.roots()?, provider()));
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(bad)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| bad(format!("certificate and key do not go together: {e}")))?;
        Ok(Arc::new(config))
    }
}

/// A client configuration without a certificate of its own (a script
/// authenticating with a token): trusts only `dir/ca.crt`'s nodes.
pub fn anonymous_client_config(dir: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let ca = certs_in(&dir.join("ca.crt"))?.remove(0);
    let mut roots = RootCertStore::empty();
    roots
        .add(ca)
        .map_err(|e| bad(format!("ca.crt is not a usable CA certificate: {e}")))?;
    let verifier = Arc::new(verify::NodeVerifier::new(Arc::new(roots), provider()));
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(bad)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Does `dir` hold any client certificate?
pub fn has_client_cert(dir: &Path) -> bool {
    only_client(dir).is_ok()
}

fn only_client(dir: &Path) -> Result<String, TlsError> {
    let entries = std::fs::read_dir(dir).map_err(|source| TlsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let f = e.file_name().to_string_lossy().to_string();
            f.strip_prefix("client-")
                .and_then(|r| r.strip_suffix(".crt"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    match names.len() {
        1 => Ok(names.remove(0)),
        0 => Err(bad(format!(
            "{}: no client certificate (make one with `tern certs client NAME --dir {}`)",
            dir.display(),
            dir.display()
        ))),
        _ => Err(bad(format!(
            "{}: several client certificates ({}); say which with --tls-client",
            dir.display(),
            names.join(", ")
        ))),
    }
}

/// The one line for an I/O error that carries a TLS error (as rustls's
/// streams and tokio-rustls report them), if it does.
pub fn explain_io(e: &std::io::Error) -> Option<String> {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .map(explain)
}

/// Turns a TLS error into the one line a user reads.
pub fn explain(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::UnknownIssuer) | E::InvalidCertificate(C::BadSignature) => {
            "the peer's certificate is not signed by this cluster's CA".into()
        }
        E::InvalidCertificate(C::Expired) | E::InvalidCertificate(C::ExpiredContext { .. }) => {
            "the peer's certificate has expired".into()
        }
        E::InvalidCertificate(C::NotValidYet)
        | E::InvalidCertificate(C::NotValidYetContext { .. }) => {
            "the peer's certificate is not valid yet".into()
        }
        E::AlertReceived(A::UnknownCA) | E::AlertReceived(A::BadCertificate) => {
            "the peer refused our certificate: it is not signed by the peer's cluster CA".into()
        }
        E::AlertReceived(A::CertificateExpired) => {
            "the peer refused our certificate: it has expired".into()
        }
        E::AlertReceived(A::CertificateRequired) => {
            "the peer requires a client certificate (give --tls-dir with one)".into()
        }
        E::InvalidMessage(_) => "the peer does not speak TLS".into(),
        other => format!("TLS failed: {other}"),
    }
}

#[cfg(test)]
mod tests;
