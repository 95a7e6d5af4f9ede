//! Configuration: compiled defaults, then `config/nephos.toml` (or `--config`), then `NEPHOS_*`
//! environment variables, then command-line flags. Flags and environment variables are declared
//! together with clap (`#[arg(env = ...)]`), so clap already applies "flag beats environment";
//! this module lays the result over the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::auth::{Account, SignatureAlgorithm};

/// The default development account, used when no account is configured.
pub const DEV_ACCOUNT_URL: &str = "cloudinary://123456789012345:nephos-dev-secret@demo";

#[derive(Debug, Parser)]
#[command(
    name = "nephos",
    version,
    about = "A self-hosted server that speaks Cloudinary's Upload API",
    after_help = "Logging: NEPHOS_LOG sets what is logged, as a tracing filter \
                  (default `info,sqlx=warn`; e.g. `debug`, `nephos=debug`, `warn`). \
                  Every option above can also be set by its NEPHOS_* environment variable."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(Box<ServeArgs>),
    /// Check that a running nephos answers `GET /health` with 200 (exit status 0), e.g. as a
    /// container's health check; it reads the same `--listen`/`NEPHOS_LISTEN`.
    Healthcheck(HealthcheckArgs),
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// The address nephos listens on (0.0.0.0 and :: are checked on loopback); default the
    /// configuration file's `listen`, else 127.0.0.1:8777.
    #[arg(long, env = "NEPHOS_LISTEN")]
    pub listen: Option<String>,
    /// Configuration file; default `config/nephos.toml` when present.
    #[arg(long, env = "NEPHOS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 5)]
    pub timeout_secs: u64,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Every option of `nephos serve`; each one is reachable through its environment variable.
#[derive(Debug, Default, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "NEPHOS_LISTEN")]
    pub listen: Option<String>,
    /// Folder for blobs, temporary files and the default SQLite database.
    #[arg(long, env = "NEPHOS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// `sqlite:PATH` or `postgres://…`; default: SQLite inside the data dir.
    #[arg(long, env = "NEPHOS_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Base of every `url`/`secure_url` the server returns; default `http://<listen address>`.
    #[arg(long, env = "NEPHOS_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// `cloudinary://KEY:SECRET@CLOUD[?signature_algorithm=sha256]`, repeatable
    /// (environment: comma-separated).
    #[arg(long = "account", env = "NEPHOS_ACCOUNTS", value_delimiter = ',')]
    pub accounts: Vec<String>,
    /// An OAuth bearer token accepted for a cloud, `CLOUD:TOKEN`, repeatable (environment:
    /// comma-separated); it acts as the cloud's first account.
    #[arg(
        long = "oauth-token",
        env = "NEPHOS_OAUTH_TOKENS",
        value_delimiter = ','
    )]
    pub oauth_tokens: Vec<String>,
    /// Networks (CIDRs) and host names the server may fetch from although they are loopback,
    /// private, link-local or otherwise special, e.g. `127.0.0.0/8,::1/128` (comma-separated).
    #[arg(
        long = "allow-fetch-from",
        env = "NEPHOS_ALLOW_FETCH_FROM",
        value_delimiter = ','
    )]
    pub allow_fetch_from: Vec<String>,
    /// Configuration file; default `config/nephos.toml` when present.
    #[arg(long, env = "NEPHOS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Largest accepted upload body in bytes.
    #[arg(long, env = "NEPHOS_MAX_UPLOAD_BYTES")]
    pub max_upload_bytes: Option<u64>,
    /// Largest remote file fetched for an `http(s)://` `file` parameter, in bytes.
    #[arg(long, env = "NEPHOS_MAX_REMOTE_BYTES")]
    pub max_remote_bytes: Option<u64>,
    /// Timeout for fetching a remote file, in seconds.
    #[arg(long, env = "NEPHOS_REMOTE_TIMEOUT_SECS")]
    pub remote_timeout_secs: Option<u64>,
    /// Redirects followed when fetching a remote file.
    #[arg(long, env = "NEPHOS_REMOTE_MAX_REDIRECTS")]
    pub remote_max_redirects: Option<usize>,
    /// Largest text field (e.g. a data URI) accepted in a request, in bytes.
    #[arg(long, env = "NEPHOS_MAX_FIELD_BYTES")]
    pub max_field_bytes: Option<u64>,
    /// Largest image (width × height, source or result) a delivery transformation handles.
    #[arg(long, env = "NEPHOS_MAX_IMAGE_PIXELS")]
    pub max_image_pixels: Option<u64>,
    /// Admin API calls allowed per cloud and hour (Cloudinary's free plan: 500); 0 turns the
    /// limit and its `X-FeatureRateLimit-*` headers off.
    #[arg(long, env = "NEPHOS_ADMIN_RATE_LIMIT")]
    pub admin_rate_limit: Option<u64>,
    /// Parameters one request may carry.
    #[arg(long, env = "NEPHOS_MAX_FIELDS")]
    pub max_fields: Option<usize>,
    /// Seconds a client has to send a request's headers (and an idle connection stays open).
    #[arg(long, env = "NEPHOS_HEADER_TIMEOUT_SECS")]
    pub header_timeout_secs: Option<u64>,
    /// Seconds shutdown waits for requests in flight (new connections are refused at once).
    #[arg(long, env = "NEPHOS_SHUTDOWN_TIMEOUT_SECS")]
    pub shutdown_timeout_secs: Option<u64>,
    /// Seconds a request body may pause between two pieces before it is abandoned.
    #[arg(long, env = "NEPHOS_BODY_TIMEOUT_SECS")]
    pub body_timeout_secs: Option<u64>,
    /// Connections open at once at most (more are closed when they arrive).
    #[arg(long, env = "NEPHOS_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Threads that serve connections, each its own share of them (0: one per CPU).
    #[arg(long, env = "NEPHOS_CONNECTION_THREADS")]
    pub connection_threads: Option<usize>,
    /// Seconds after which a stored file no record refers to is removed.
    #[arg(long, env = "NEPHOS_ORPHAN_AGE_SECS")]
    pub orphan_age_secs: Option<u64>,
    /// Bytes of request text (parameters, JSON and form bodies) all requests together may hold
    /// in memory; more is refused with 420 until some is released.
    #[arg(long, env = "NEPHOS_MAX_BUFFERED_BYTES")]
    pub max_buffered_bytes: Option<u64>,
    /// Derived images rendered at once at most (0: the number of CPU cores).
    #[arg(long, env = "NEPHOS_RENDER_CONCURRENCY")]
    pub render_concurrency: Option<usize>,
    /// Seconds a derived image may take to render (waiting for a turn included).
    #[arg(long, env = "NEPHOS_RENDER_TIMEOUT_SECS")]
    pub render_timeout_secs: Option<u64>,
    /// Bytes a decoded source image may take in memory (a 16-bit or huge image is refused).
    #[arg(long, env = "NEPHOS_MAX_DECODE_BYTES")]
    pub max_decode_bytes: Option<u64>,
    /// Derived images kept per asset; more are rendered for each request but not stored.
    #[arg(long, env = "NEPHOS_MAX_DERIVED_PER_ASSET")]
    pub max_derived_per_asset: Option<usize>,
    /// Cloudinary's "strict transformations": unsigned delivery URLs may only use named
    /// transformations allowed for strict mode, or derived images that already exist.
    #[arg(long, env = "NEPHOS_STRICT_TRANSFORMATIONS", value_parser = clap::builder::BoolishValueParser::new())]
    pub strict_transformations: bool,
    /// Seconds a signed request stays valid (Cloudinary: 3600).
    #[arg(long, env = "NEPHOS_SIGNATURE_TTL_SECS")]
    pub signature_ttl_secs: Option<i64>,
    /// Largest file assembled from a chunked upload, in bytes.
    #[arg(long, env = "NEPHOS_MAX_FILE_BYTES")]
    pub max_file_bytes: Option<u64>,
    /// Chunked uploads in progress allowed per cloud.
    #[arg(long, env = "NEPHOS_MAX_OPEN_UPLOADS")]
    pub max_open_uploads: Option<i64>,
    /// Seconds after which an abandoned chunked upload and its parts are removed.
    #[arg(long, env = "NEPHOS_UPLOAD_SESSION_TTL_SECS")]
    pub upload_session_ttl_secs: Option<i64>,
    /// Testing aid: freeze the server clock at this Unix time (used to replay recorded requests).
    #[arg(long, env = "NEPHOS_FIXED_TIME")]
    pub fixed_time: Option<i64>,
    /// Keep everything in memory and a temporary folder removed at exit (the database is an
    /// in-memory SQLite unless --database-url says otherwise).
    #[arg(long, env = "NEPHOS_EPHEMERAL", value_parser = clap::builder::BoolishValueParser::new())]
    pub ephemeral: bool,
    /// A folder whose files are uploaded into every configured cloud at start and after a
    /// reset (public IDs from the relative paths).
    #[arg(long, env = "NEPHOS_SEED")]
    pub seed: Option<PathBuf>,
    /// Bearer token of the control API (`/_nephos/`); with it, the control API is on whatever
    /// the listen address; without it, only when listening on loopback.
    #[arg(long, env = "NEPHOS_CONTROL_TOKEN")]
    pub control_token: Option<String>,
    /// Turn the control API off.
    #[arg(long, env = "NEPHOS_NO_CONTROL", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_control: bool,
    /// Where blobs are kept: `s3://bucket[/prefix]` (credentials, region and endpoint from the
    /// `AWS_*` variables) or `file:///path`; default the data dir's `blobs` folder.
    #[arg(long, env = "NEPHOS_STORAGE_URL")]
    pub storage_url: Option<String>,
    /// Bearer token `/metrics` asks for; without it, `/metrics` is open.
    #[arg(long, env = "NEPHOS_METRICS_TOKEN")]
    pub metrics_token: Option<String>,
    /// Turn `/metrics` off.
    #[arg(long, env = "NEPHOS_NO_METRICS", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_metrics: bool,
    /// Serve TLS and plain HTTP on the same port; without --tls-cert/--tls-key, a local CA and
    /// a server certificate are made in `<data dir>/tls` on first start.
    #[arg(long, env = "NEPHOS_TLS", value_parser = clap::builder::BoolishValueParser::new())]
    pub tls: bool,
    /// PEM certificate chain to serve with --tls.
    #[arg(long, env = "NEPHOS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "NEPHOS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Origins browsers may call from (comma-separated), or `*` for any (the default; never
    /// with credentials).
    #[arg(long, env = "NEPHOS_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Log lines as text (no colours unless on a terminal) or JSON.
    #[arg(long, env = "NEPHOS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// The file format (`config/nephos.toml`). Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub public_url: Option<String>,
    #[serde(default)]
    pub accounts: Vec<String>,
    /// `CLOUD:TOKEN` OAuth bearer tokens.
    #[serde(default)]
    pub oauth_tokens: Vec<String>,
    /// Networks and host names fetches may reach although special (loopback, private, …).
    #[serde(default)]
    pub allow_fetch_from: Vec<String>,
    #[serde(default)]
    pub limits: FileLimits,
    #[serde(default)]
    pub upload_presets: Vec<PresetSeed>,
    pub fixed_time: Option<i64>,
    pub seed: Option<PathBuf>,
    pub control_token: Option<String>,
    pub metrics_token: Option<String>,
    pub storage_url: Option<String>,
    #[serde(default)]
    pub cors_origins: Vec<String>,
    pub tls: Option<bool>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub max_upload_bytes: Option<u64>,
    pub max_remote_bytes: Option<u64>,
    pub remote_timeout_secs: Option<u64>,
    pub remote_max_redirects: Option<usize>,
    pub max_field_bytes: Option<u64>,
    pub signature_ttl_secs: Option<i64>,
    pub max_file_bytes: Option<u64>,
    pub max_open_uploads: Option<i64>,
    pub upload_session_ttl_secs: Option<i64>,
    pub max_image_pixels: Option<u64>,
    pub admin_rate_limit: Option<u64>,
    pub max_fields: Option<usize>,
    pub header_timeout_secs: Option<u64>,
    pub shutdown_timeout_secs: Option<u64>,
    pub body_timeout_secs: Option<u64>,
    pub max_connections: Option<usize>,
    pub connection_threads: Option<usize>,
    pub orphan_age_secs: Option<u64>,
    pub max_buffered_bytes: Option<u64>,
    pub render_concurrency: Option<usize>,
    pub render_timeout_secs: Option<u64>,
    pub max_decode_bytes: Option<u64>,
    pub max_derived_per_asset: Option<usize>,
    pub strict_transformations: Option<bool>,
}

/// An upload preset defined in the configuration file; written to the database at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresetSeed {
    /// The cloud the preset belongs to; every configured cloud when absent.
    pub cloud: Option<String>,
    pub name: String,
    #[serde(default)]
    pub unsigned: bool,
    #[serde(default)]
    pub disallow_public_id: bool,
    /// Upload parameters in their wire form (`tags = "a,b"`, `overwrite = true`, …).
    #[serde(default)]
    pub settings: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_upload_bytes: u64,
    pub max_remote_bytes: u64,
    pub remote_timeout_secs: u64,
    pub remote_max_redirects: usize,
    pub max_field_bytes: u64,
    pub signature_ttl_secs: i64,
    pub max_file_bytes: u64,
    pub max_open_uploads: i64,
    pub upload_session_ttl_secs: i64,
    pub max_image_pixels: u64,
    /// Admin API calls per cloud and hour; 0 = unlimited.
    pub admin_rate_limit: u64,
    /// Parameters one request may carry.
    pub max_fields: usize,
    /// Seconds to send request headers (and to stay idle between requests).
    pub header_timeout_secs: u64,
    /// Seconds shutdown waits for requests in flight.
    pub shutdown_timeout_secs: u64,
    /// Seconds a body may pause between pieces.
    pub body_timeout_secs: u64,
    /// Open connections at most.
    pub max_connections: usize,
    /// Threads serving connections (0: one per CPU).
    pub connection_threads: usize,
    /// Age after which an unreferenced stored file is removed.
    pub orphan_age_secs: u64,
    /// Request text all requests together may hold in memory.
    pub max_buffered_bytes: u64,
    /// Derived images rendered at once (0: the number of cores).
    pub render_concurrency: usize,
    /// Seconds a render may take, its wait for a turn included.
    pub render_timeout_secs: u64,
    /// Memory a decoded source image may take.
    pub max_decode_bytes: u64,
    /// Derived images stored per asset.
    pub max_derived_per_asset: usize,
    /// Unsigned URLs render only allowed named transformations or existing derived images.
    pub strict_transformations: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_upload_bytes: 2 * 1024 * 1024 * 1024,
            max_remote_bytes: 100 * 1024 * 1024,
            remote_timeout_secs: 30,
            remote_max_redirects: 5,
            max_field_bytes: 64 * 1024 * 1024,
            signature_ttl_secs: 3600,
            max_file_bytes: 20 * 1024 * 1024 * 1024,
            max_open_uploads: 1000,
            upload_session_ttl_secs: 24 * 3600,
            max_image_pixels: 50_000_000,
            admin_rate_limit: 500,
            max_fields: 1000,
            header_timeout_secs: 15,
            shutdown_timeout_secs: 30,
            body_timeout_secs: 30,
            max_connections: 4096,
            connection_threads: 0,
            orphan_age_secs: 3600,
            max_buffered_bytes: 128 * 1024 * 1024,
            render_concurrency: 0,
            render_timeout_secs: 30,
            max_decode_bytes: 256 * 1024 * 1024,
            max_derived_per_asset: 500,
            strict_transformations: false,
        }
    }
}

/// The resolved configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    /// `None`: SQLite at `<data_dir>/nephos.db`.
    pub database_url: Option<String>,
    /// `None`: `http://<bound address>`.
    pub public_url: Option<String>,
    pub accounts: Vec<Account>,
    /// OAuth bearer tokens: `(cloud, token)`.
    pub oauth_tokens: Vec<(String, String)>,
    /// What the fetch policy opens.
    pub allow_fetch_from: crate::netpolicy::AllowList,
    /// True when no account was configured and the development account is in use.
    pub dev_account: bool,
    pub limits: Limits,
    pub presets: Vec<PresetSeed>,
    pub fixed_time: Option<i64>,
    /// In memory and a temporary folder removed at exit.
    pub ephemeral: bool,
    pub seed: Option<PathBuf>,
    pub control_token: Option<String>,
    pub no_control: bool,
    /// Bearer token of `/metrics` (open without one).
    pub metrics_token: Option<String>,
    /// Where blobs are kept (`None`: the data dir's `blobs` folder).
    pub storage_url: Option<String>,
    pub no_metrics: bool,
    pub tls: Option<Tls>,
    /// Allowed browser origins; empty: any.
    pub cors_origins: Vec<String>,
}

/// Where the TLS certificate comes from.
#[derive(Debug, Clone)]
pub enum Tls {
    /// A local CA and server certificate made in the data dir.
    Generated,
    /// PEM files given.
    Files { cert: PathBuf, key: PathBuf },
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8777".into(),
            data_dir: PathBuf::from("./nephos-data"),
            database_url: None,
            public_url: None,
            accounts: Vec::new(),
            oauth_tokens: Vec::new(),
            allow_fetch_from: crate::netpolicy::AllowList::default(),
            dev_account: false,
            limits: Limits::default(),
            presets: Vec::new(),
            fixed_time: None,
            ephemeral: false,
            seed: None,
            control_token: None,
            no_control: false,
            metrics_token: None,
            no_metrics: false,
            storage_url: None,
            tls: None,
            cors_origins: Vec::new(),
        }
    }
}

/// The configuration file: the one given, else `config/nephos.toml` when present.
fn config_file(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    match path {
        Some(path) => read_file(path),
        None => {
            let default = Path::new("config/nephos.toml");
            if default.exists() {
                read_file(default)
            } else {
                Ok(FileConfig::default())
            }
        }
    }
}

impl HealthcheckArgs {
    /// The address the server listens on, resolved as `serve` resolves it.
    pub fn listen_addr(&self) -> anyhow::Result<String> {
        if let Some(l) = &self.listen {
            return Ok(l.clone());
        }
        Ok(config_file(self.config.as_deref())?
            .listen
            .unwrap_or_else(|| Config::default().listen))
    }
}

impl Config {
    /// Builds the configuration from the parsed flags/environment and the configuration file.
    pub fn load(args: &ServeArgs) -> anyhow::Result<Config> {
        Config::from_parts(config_file(args.config.as_deref())?, args)
    }

    pub fn from_parts(file: FileConfig, args: &ServeArgs) -> anyhow::Result<Config> {
        let mut cfg = Config::default();
        let d = Limits::default();
        let fl = &file.limits;
        cfg.limits = Limits {
            max_upload_bytes: args
                .max_upload_bytes
                .or(fl.max_upload_bytes)
                .unwrap_or(d.max_upload_bytes),
            max_remote_bytes: args
                .max_remote_bytes
                .or(fl.max_remote_bytes)
                .unwrap_or(d.max_remote_bytes),
            remote_timeout_secs: args
                .remote_timeout_secs
                .or(fl.remote_timeout_secs)
                .unwrap_or(d.remote_timeout_secs),
            remote_max_redirects: args
                .remote_max_redirects
                .or(fl.remote_max_redirects)
                .unwrap_or(d.remote_max_redirects),
            max_field_bytes: args
                .max_field_bytes
                .or(fl.max_field_bytes)
                .unwrap_or(d.max_field_bytes),
            max_image_pixels: args
                .max_image_pixels
                .or(fl.max_image_pixels)
                .unwrap_or(d.max_image_pixels),
            admin_rate_limit: args
                .admin_rate_limit
                .or(fl.admin_rate_limit)
                .unwrap_or(d.admin_rate_limit),
            max_fields: args
                .max_fields
                .or(fl.max_fields)
                .unwrap_or(d.max_fields)
                .max(1),
            header_timeout_secs: args
                .header_timeout_secs
                .or(fl.header_timeout_secs)
                .unwrap_or(d.header_timeout_secs),
            shutdown_timeout_secs: args
                .shutdown_timeout_secs
                .or(fl.shutdown_timeout_secs)
                .unwrap_or(d.shutdown_timeout_secs),
            body_timeout_secs: args
                .body_timeout_secs
                .or(fl.body_timeout_secs)
                .unwrap_or(d.body_timeout_secs),
            max_connections: args
                .max_connections
                .or(fl.max_connections)
                .unwrap_or(d.max_connections),
            connection_threads: args
                .connection_threads
                .or(fl.connection_threads)
                .unwrap_or(d.connection_threads),
            orphan_age_secs: args
                .orphan_age_secs
                .or(fl.orphan_age_secs)
                .unwrap_or(d.orphan_age_secs),
            max_buffered_bytes: args
                .max_buffered_bytes
                .or(fl.max_buffered_bytes)
                .unwrap_or(d.max_buffered_bytes),
            render_concurrency: args
                .render_concurrency
                .or(fl.render_concurrency)
                .unwrap_or(d.render_concurrency),
            render_timeout_secs: args
                .render_timeout_secs
                .or(fl.render_timeout_secs)
                .unwrap_or(d.render_timeout_secs)
                .max(1),
            max_decode_bytes: args
                .max_decode_bytes
                .or(fl.max_decode_bytes)
                .unwrap_or(d.max_decode_bytes),
            max_derived_per_asset: args
                .max_derived_per_asset
                .or(fl.max_derived_per_asset)
                .unwrap_or(d.max_derived_per_asset),
            strict_transformations: args.strict_transformations
                || fl
                    .strict_transformations
                    .unwrap_or(d.strict_transformations),
            signature_ttl_secs: args
                .signature_ttl_secs
                .or(fl.signature_ttl_secs)
                .unwrap_or(d.signature_ttl_secs),
            max_file_bytes: args
                .max_file_bytes
                .or(fl.max_file_bytes)
                .unwrap_or(d.max_file_bytes),
            max_open_uploads: args
                .max_open_uploads
                .or(fl.max_open_uploads)
                .unwrap_or(d.max_open_uploads),
            upload_session_ttl_secs: args
                .upload_session_ttl_secs
                .or(fl.upload_session_ttl_secs)
                .unwrap_or(d.upload_session_ttl_secs),
        };
        if let Some(v) = args.listen.clone().or(file.listen) {
            cfg.listen = v;
        }
        if let Some(v) = args.data_dir.clone().or(file.data_dir) {
            cfg.data_dir = v;
        }
        cfg.database_url = args.database_url.clone().or(file.database_url);
        cfg.public_url = args
            .public_url
            .clone()
            .or(file.public_url)
            .map(|u| u.trim_end_matches('/').to_string());
        let account_urls: Vec<String> = if args.accounts.is_empty() {
            file.accounts
        } else {
            args.accounts.clone()
        };
        for url in account_urls.iter().filter(|u| !u.trim().is_empty()) {
            cfg.accounts.push(parse_account_url(url.trim())?);
        }
        if cfg.accounts.is_empty() {
            cfg.accounts.push(parse_account_url(DEV_ACCOUNT_URL)?);
            cfg.dev_account = true;
        }
        let tokens = if args.oauth_tokens.is_empty() {
            file.oauth_tokens
        } else {
            args.oauth_tokens.clone()
        };
        for t in tokens.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
            let (cloud, token) = t
                .split_once(':')
                .filter(|(c, t)| !c.is_empty() && t.len() >= 8)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "invalid OAuth token {t:?}: expected CLOUD:TOKEN with a token of 8 or more characters"
                    )
                })?;
            cfg.oauth_tokens
                .push((cloud.to_string(), token.to_string()));
        }
        let allow = if args.allow_fetch_from.is_empty() {
            file.allow_fetch_from
        } else {
            args.allow_fetch_from.clone()
        };
        cfg.allow_fetch_from = crate::netpolicy::AllowList::parse(&allow)
            .map_err(|e| anyhow::anyhow!("allow_fetch_from: {e}"))?;
        cfg.presets = file.upload_presets;
        cfg.fixed_time = args.fixed_time.or(file.fixed_time);
        cfg.ephemeral = args.ephemeral;
        cfg.seed = args.seed.clone().or(file.seed);
        cfg.control_token = args
            .control_token
            .clone()
            .or(file.control_token)
            .filter(|t| !t.is_empty());
        if cfg.control_token.as_ref().is_some_and(|t| t.len() < 8) {
            anyhow::bail!("the control token must have 8 or more characters");
        }
        cfg.no_control = args.no_control;
        cfg.metrics_token = args
            .metrics_token
            .clone()
            .or(file.metrics_token)
            .filter(|t| !t.is_empty());
        cfg.no_metrics = args.no_metrics;
        cfg.storage_url = args
            .storage_url
            .clone()
            .or(file.storage_url)
            .filter(|u| !u.is_empty());
        let cert = args.tls_cert.clone().or(file.tls_cert);
        let key = args.tls_key.clone().or(file.tls_key);
        cfg.tls = match (args.tls || file.tls.unwrap_or(false), cert, key) {
            (false, None, None) => None,
            (_, Some(cert), Some(key)) => Some(Tls::Files { cert, key }),
            (true, None, None) => Some(Tls::Generated),
            _ => anyhow::bail!("tls_cert and tls_key go together"),
        };
        let origins = if args.cors_origins.is_empty() {
            file.cors_origins
        } else {
            args.cors_origins.clone()
        };
        cfg.cors_origins = origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_string())
            .filter(|o| !o.is_empty() && o != "*")
            .collect();
        for o in &cfg.cors_origins {
            let ok = url::Url::parse(o)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                anyhow::bail!("invalid CORS origin {o:?}: expected scheme://host[:port] or *");
            }
        }
        Ok(cfg)
    }

    /// The address to bind, validated.
    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listen
            .parse()
            .map_err(|e| anyhow::anyhow!("invalid listen address {:?}: {e}", self.listen))
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid {}: {e}", path.display()))
}

/// Parses `cloudinary://KEY:SECRET@CLOUD[?signature_algorithm=sha256][&signature_version=1]`.
pub fn parse_account_url(url: &str) -> anyhow::Result<Account> {
    let rest = url
        .strip_prefix("cloudinary://")
        .ok_or_else(|| anyhow::anyhow!("account {url:?} must start with cloudinary://"))?;
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let (creds, cloud) = main.rsplit_once('@').ok_or_else(|| {
        anyhow::anyhow!("account {url:?} must look like cloudinary://KEY:SECRET@CLOUD")
    })?;
    let (key, secret) = creds.split_once(':').ok_or_else(|| {
        anyhow::anyhow!("account {url:?} must look like cloudinary://KEY:SECRET@CLOUD")
    })?;
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (key, secret, cloud) = (
        decode(key),
        decode(secret),
        decode(cloud.trim_end_matches('/')),
    );
    if key.is_empty() || secret.is_empty() {
        anyhow::bail!("account {url:?} needs a key and a secret");
    }
    if cloud.len() < 2
        || cloud.len() > 128
        || !cloud
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        anyhow::bail!("account {url:?}: cloud name must be 2-128 characters of [A-Za-z0-9_-]");
    }
    let mut algorithm = SignatureAlgorithm::Sha1;
    let mut signature_v1 = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (k, v.to_ascii_lowercase().as_str()) {
            ("signature_version", "1") => signature_v1 = true,
            ("signature_version", "2") => signature_v1 = false,
            ("signature_version", other) => {
                anyhow::bail!("account {url:?}: unknown signature_version {other:?}")
            }
            ("signature_algorithm", name) => {
                algorithm = SignatureAlgorithm::from_name(name).ok_or_else(|| {
                    anyhow::anyhow!("account {url:?}: unknown signature_algorithm {name:?}")
                })?
            }
            // Other CLOUDINARY_URL options (upload_prefix, secure, …) are client settings.
            _ => {}
        }
    }
    Ok(Account {
        cloud,
        api_key: key,
        api_secret: secret,
        algorithm,
        signature_v1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_account_urls() {
        let a = parse_account_url(
            "cloudinary://1234:abcd@demo?upload_prefix=http://x&signature_algorithm=sha256",
        )
        .unwrap();
        assert_eq!(
            (a.api_key.as_str(), a.api_secret.as_str(), a.cloud.as_str()),
            ("1234", "abcd", "demo")
        );
        assert_eq!(a.algorithm, SignatureAlgorithm::Sha256);
        assert!(parse_account_url("https://1234:abcd@demo").is_err());
        assert!(parse_account_url("cloudinary://1234@demo").is_err());
        assert!(parse_account_url("cloudinary://1:2@../x").is_err());
    }

    #[test]
    fn healthcheck_finds_the_listen_address_as_serve_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        std::fs::write(&path, "listen = \"0.0.0.0:9123\"\n").unwrap();
        let mut args = HealthcheckArgs {
            listen: None,
            config: Some(path),
            timeout_secs: 1,
        };
        assert_eq!(args.listen_addr().unwrap(), "0.0.0.0:9123");
        args.listen = Some("127.0.0.1:5".into());
        assert_eq!(args.listen_addr().unwrap(), "127.0.0.1:5");
        args.listen = None;
        args.config = Some(dir.path().join("missing.toml"));
        assert!(args.listen_addr().is_err());
    }

    #[test]
    fn flags_beat_file_and_defaults_fill_the_rest() {
        let file: FileConfig = toml::from_str(
            "listen = \"0.0.0.0:1\"\naccounts = [\"cloudinary://k:s@filecloud\"]\n[limits]\nmax_upload_bytes = 10\n",
        )
        .unwrap();
        let args = ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        let cfg = Config::from_parts(file, &args).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:0");
        assert_eq!(cfg.limits.max_upload_bytes, 10);
        assert_eq!(cfg.limits.signature_ttl_secs, 3600);
        assert_eq!(cfg.accounts[0].cloud, "filecloud");
        assert!(!cfg.dev_account);
        let cfg = Config::from_parts(FileConfig::default(), &ServeArgs::default()).unwrap();
        assert!(cfg.dev_account);
        assert_eq!(cfg.accounts[0].cloud, "demo");
    }
}

#[cfg(test)]
mod shipped_file_tests {
    use super::*;

    /// The shipped `config/nephos.toml` parses as is, and with every documented key
    /// uncommented (so the comments cannot drift from the real keys).
    #[test]
    fn shipped_config_documents_real_keys() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/nephos.toml"))
                .unwrap();
        let parsed: FileConfig = toml::from_str(&text).unwrap();
        assert!(parsed.accounts.is_empty());
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.starts_with('[')
                        || rest.starts_with("  \"")
                        || rest.starts_with(']')
                        || rest.split_once(" = ").is_some_and(|(k, _)| {
                            !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                        }) =>
                {
                    rest.to_string()
                }
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let full: FileConfig = toml::from_str(&uncommented).unwrap();
        assert_eq!(full.accounts.len(), 2);
        assert_eq!(
            full.limits.max_upload_bytes,
            Some(Limits::default().max_upload_bytes)
        );
        assert_eq!(full.limits.signature_ttl_secs, Some(3600));
        assert_eq!(full.upload_presets.len(), 1);
        let cfg = Config::from_parts(full, &ServeArgs::default()).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:8777");
    }
}
