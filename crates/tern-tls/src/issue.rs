//! Making a cluster CA and the certificates it signs (`tern certs`).

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::{bad, check_name, Role, TlsError};

/// How long a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// First instant it is valid.
    pub not_before: OffsetDateTime,
    /// Last instant it is valid.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clocks differ a little between hosts) for `days`.
    pub fn days(days: u32) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(i64::from(days)),
        }
    }

    /// Valid until `not_after` (Unix seconds), from a day before it at the
    /// latest: lets tests and drills make already-expired certificates.
    pub fn until_unix(not_after: i64) -> Result<Validity, TlsError> {
        let not_after = OffsetDateTime::from_unix_timestamp(not_after)
            .map_err(|e| bad(format!("bad expiry time: {e}")))?;
        let now = OffsetDateTime::now_utc();
        Ok(Validity {
            not_before: (now - Duration::hours(1)).min(not_after - Duration::days(1)),
            not_after,
        })
    }
}

fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

fn refuse_existing(paths: &[PathBuf]) -> Result<(), TlsError> {
    for p in paths {
        if p.exists() {
            return Err(bad(format!(
                "{} already exists; remove it first to replace it",
                p.display()
            )));
        }
    }
    Ok(())
}

fn dn(name: &str, role: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationalUnitName, role);
    dn.push(DnType::OrganizationName, "tern");
    dn
}

/// Makes a new cluster CA in `dir` (`ca.crt`, `ca.key`), named `cluster`.
/// Refuses to overwrite one.
pub fn init_ca(dir: &Path, cluster: &str, days: u32) -> Result<PathBuf, TlsError> {
    check_name(cluster)?;
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    refuse_existing(&[crt.clone(), key.clone()])?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cluster, "ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let v = Validity::days(days);
    params.not_before = v.not_before;
    params.not_after = v.not_after;
    let pair = KeyPair::generate().map_err(bad)?;
    let cert = params.self_signed(&pair).map_err(bad)?;
    // The key first: a crash between the two leaves no CA without its key.
    write_new(&key, &pair.serialize_pem(), true)?;
    write_new(&crt, &cert.pem(), false)?;
    Ok(crt)
}

/// Issues a certificate for `name` with `role`, signed by `dir`'s CA, as
/// `dir/node-NAME.crt` (nodes), `dir/controller-NAME.crt` (controllers) or
/// `dir/client-NAME.crt` (clients), with its
/// key beside it. Extra `hosts` (DNS names or IP addresses) go in the
/// subject alternative names, for tools that check them.
pub fn issue(
    dir: &Path,
    name: &str,
    role: Role,
    hosts: &[String],
    validity: Validity,
) -> Result<PathBuf, TlsError> {
    check_name(name)?;
    let ca_key_path = dir.join("ca.key");
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(|source| TlsError::Io {
        path: ca_key_path.clone(),
        source,
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| bad(format!("{}: not a usable key: {e}", ca_key_path.display())))?;
    let ca_crt_path = dir.join("ca.crt");
    let ca_pem = std::fs::read_to_string(&ca_crt_path).map_err(|source| TlsError::Io {
        path: ca_crt_path.clone(),
        source,
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(|e| bad(format!("{}: not a usable CA: {e}", ca_crt_path.display())))?;

    let stem = match role {
        Role::Node => format!("node-{name}"),
        Role::Controller => format!("controller-{name}"),
        Role::Admin | Role::Read => format!("client-{name}"),
    };
    let (crt, key) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    refuse_existing(&[crt.clone(), key.clone()])?;

    let mut params = CertificateParams::default();
    params.distinguished_name = dn(name, role.as_str());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        // A node is a server to its clients and a client of other nodes; a
        // controller serves clients and nodes and calls nodes.
        Role::Node | Role::Controller => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Admin | Role::Read => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    let mut sans = vec![SanType::DnsName(name.try_into().map_err(bad)?)];
    for h in hosts {
        sans.push(match h.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                h.as_str()
                    .try_into()
                    .map_err(|e| bad(format!("bad host name {h:?}: {e}")))?,
            ),
        });
    }
    params.subject_alt_names = sans;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let pair = KeyPair::generate().map_err(bad)?;
    let cert = params.signed_by(&pair, &issuer).map_err(bad)?;
    write_new(&key, &pair.serialize_pem(), true)?;
    write_new(&crt, &cert.pem(), false)?;
    Ok(crt)
}
