//! TLS for `--tls`: a local CA and a server certificate made in `<data dir>/tls` on first
//! start (the CA is kept, so trusting it once lasts), or the PEM files given. The accept loop
//! serves TLS and plain HTTP on the same port (see `server.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
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

/// The CA's parameters: the same each time, so that a CA key read back signs certificates
/// that chain to the CA certificate written the first time.
fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    dn.push(DnType::OrganizationName, "nephos");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
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
    let (ca_key, ca_pem) = if ca_cert_path.exists() && ca_key_path.exists() {
        let key_pem = std::fs::read_to_string(&ca_key_path)
            .with_context(|| format!("cannot read {}", ca_key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("invalid CA key {}", ca_key_path.display()))?;
        let pem = std::fs::read_to_string(&ca_cert_path)
            .with_context(|| format!("cannot read {}", ca_cert_path.display()))?;
        (key, pem)
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        write_private(&ca_key_path, &key.serialize_pem())
            .with_context(|| format!("cannot write {}", ca_key_path.display()))?;
        std::fs::write(&ca_cert_path, cert.pem())
            .with_context(|| format!("cannot write {}", ca_cert_path.display()))?;
        (key, cert.pem())
    };
    // The issuer as rcgen needs it: same name and key as the CA written the first time.
    let issuer = ca_params()?.self_signed(&ca_key)?;
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
