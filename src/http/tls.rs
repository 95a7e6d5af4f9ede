//! TLS for `--tls`: a local CA and a server certificate made in `<data dir>/tls` on first
//! start (the CA is kept, so trusting it once lasts), or the PEM files given. The accept loop
//! serves TLS and plain HTTP on the same port (see `server.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose, NameConstraints,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use crate::config::Tls;

pub struct TlsSetup {
    pub acceptor: TlsAcceptor,
    /// The local CA's certificate (to trust), when nephos made the certificate.
    pub ca_path: Option<PathBuf>,
}

const CA_NAME: &str = "nephos local development CA";

/// The DNS names a local CA may vouch for besides the public URL's host: loopback and the
/// names reserved for local networks (each covers its subdomains).
const LOCAL_DNS: &[&str] = &["localhost", "local", "test", "internal", "home.arpa"];

/// The address blocks a local CA may vouch for: loopback and the private ranges.
fn local_ip_blocks() -> Vec<CidrSubnet> {
    vec![
        CidrSubnet::V4([127, 0, 0, 0], [255, 0, 0, 0]),
        CidrSubnet::V4([10, 0, 0, 0], [255, 0, 0, 0]),
        CidrSubnet::V4([172, 16, 0, 0], [255, 240, 0, 0]),
        CidrSubnet::V4([192, 168, 0, 0], [255, 255, 0, 0]),
        CidrSubnet::from_v6_prefix(std::net::Ipv6Addr::LOCALHOST.octets(), 128),
        CidrSubnet::from_v6_prefix([0xfc, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 7),
    ]
}

/// Whether a host is one of the names or addresses every local CA covers.
fn covered_locally(host: &str) -> bool {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return match ip {
            std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
            std::net::IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
        };
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    LOCAL_DNS
        .iter()
        .any(|d| host == *d || host.ends_with(&format!(".{d}")))
}

/// The CA's parameters. A CA made here is name-constrained to local names and `extra_host`, so
/// that trusting it cannot vouch for anyone else's site. The issuer rebuilt at each start only
/// needs the same name and key.
fn ca_params(extra_host: Option<&str>) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    dn.push(DnType::OrganizationName, "nephos");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let mut permitted: Vec<GeneralSubtree> = LOCAL_DNS
        .iter()
        .map(|d| GeneralSubtree::DnsName(d.to_string()))
        .collect();
    permitted.extend(local_ip_blocks().into_iter().map(GeneralSubtree::IpAddress));
    match extra_host.map(|h| (h, h.parse::<std::net::IpAddr>())) {
        Some((_, Ok(ip))) if !covered_locally(&ip.to_string()) => {
            let whole = if ip.is_ipv4() { 32 } else { 128 };
            permitted.push(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                ip, whole,
            )));
        }
        Some((h, Err(_))) if !covered_locally(h) => {
            permitted.push(GeneralSubtree::DnsName(h.to_string()));
        }
        _ => {}
    }
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: Vec::new(),
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time_now();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    Ok(params)
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// A key file readable by others (left so by an older version or a copy) is made private.
#[cfg(unix)]
fn keep_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
                tracing::warn!("cannot make {} private: {e}", path.display());
            }
        }
    }
}

#[cfg(not(unix))]
fn keep_private(_path: &Path) {}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// Makes (or reuses) the local CA and makes a server certificate for localhost, the loopback
/// addresses and the public URL's host; answers the PEM chain, key, and the CA's path.
fn generate(dir: &Path, extra_host: Option<&str>) -> anyhow::Result<(String, String, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca_cert_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca-key.pem");
    // The host a CA made here was also constrained to (empty: local names only); a CA made
    // before constraints has no such file and vouches for any name.
    let ca_host_path = dir.join("ca-host");
    let (ca_key, ca_pem) = if ca_cert_path.exists() && ca_key_path.exists() {
        keep_private(&ca_key_path);
        if let (Some(h), Ok(made_for)) = (extra_host, std::fs::read_to_string(&ca_host_path)) {
            if !covered_locally(h) && made_for.trim() != h {
                tracing::warn!(
                    "the local CA in {} was made for {:?} and local names: certificates for {h} will not be trusted; remove that folder to make a new CA, or pass --tls-cert/--tls-key",
                    dir.display(),
                    made_for.trim()
                );
            }
        }
        let key_pem = std::fs::read_to_string(&ca_key_path)
            .with_context(|| format!("cannot read {}", ca_key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("invalid CA key {}", ca_key_path.display()))?;
        let pem = std::fs::read_to_string(&ca_cert_path)
            .with_context(|| format!("cannot read {}", ca_cert_path.display()))?;
        (key, pem)
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params(extra_host)?.self_signed(&key)?;
        std::fs::write(&ca_host_path, extra_host.unwrap_or_default())
            .with_context(|| format!("cannot write {}", ca_host_path.display()))?;
        write_private(&ca_key_path, &key.serialize_pem())
            .with_context(|| format!("cannot write {}", ca_key_path.display()))?;
        std::fs::write(&ca_cert_path, cert.pem())
            .with_context(|| format!("cannot write {}", ca_cert_path.display()))?;
        (key, cert.pem())
    };
    // The issuer as rcgen needs it: same name and key as the CA written the first time.
    let issuer = ca_params(extra_host)?.self_signed(&ca_key)?;
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Some(h) = extra_host {
        if !names.iter().any(|n| n == h) {
            names.push(h.to_string());
        }
    }
    let mut params = CertificateParams::new(names)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "nephos");
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time_now();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer, &ca_key)?;
    let chain = format!("{}{}", cert.pem(), ca_pem);
    let server_path = dir.join("server.pem");
    std::fs::write(&server_path, &chain)
        .with_context(|| format!("cannot write {}", server_path.display()))?;
    let key_path = dir.join("server-key.pem");
    write_private(&key_path, &key.serialize_pem())
        .with_context(|| format!("cannot write {}", key_path.display()))?;
    Ok((chain, key.serialize_pem(), ca_cert_path))
}

/// Prepares the TLS acceptor.
pub fn setup(tls: &Tls, data_dir: &Path, public_url: Option<&str>) -> anyhow::Result<TlsSetup> {
    let host = public_url
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()));
    let (chain_pem, key_pem, ca_path) = match tls {
        Tls::Generated => {
            let (c, k, ca) = generate(&data_dir.join("tls"), host.as_deref())?;
            (c, k, Some(ca))
        }
        Tls::Files { cert, key } => (
            std::fs::read_to_string(cert)
                .with_context(|| format!("cannot read the TLS certificate {}", cert.display()))?,
            std::fs::read_to_string(key)
                .with_context(|| format!("cannot read the TLS key {}", key.display()))?,
            None,
        ),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("invalid PEM certificate")?;
    if chain.is_empty() {
        anyhow::bail!("the TLS certificate file holds no certificate");
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("invalid PEM key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the TLS certificate and key do not go together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsSetup {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        ca_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names_are_covered_and_others_are_not() {
        for h in [
            "localhost",
            "app.localhost",
            "nas.local",
            "x.test",
            "127.0.0.1",
            "10.1.2.3",
        ] {
            assert!(covered_locally(h), "{h}");
        }
        for h in [
            "example.com",
            "8.8.8.8",
            "localhost.example.com",
            "2001:db8::1",
        ] {
            assert!(!covered_locally(h), "{h}");
        }
        assert!(covered_locally("::1"));
    }

    #[test]
    fn the_ca_is_name_constrained_and_its_key_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, ca) = generate(dir.path(), Some("nephos")).unwrap();
        let pem = std::fs::read_to_string(&ca).unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        // id-ce-nameConstraints (2.5.29.30) and the extra host among the permitted names.
        assert!(der.windows(3).any(|w| w == [0x55, 0x1d, 0x1e]));
        assert!(der.windows(6).any(|w| w == b"nephos"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key = dir.path().join("ca-key.pem");
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
            generate(dir.path(), Some("nephos")).unwrap();
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
