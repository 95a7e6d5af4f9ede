//! Start nephos inside a Rust test: an ephemeral server (memory database, temporary folder)
//! on `127.0.0.1:0`, its `CLOUDINARY_URL`, and the control API's resets and clouds.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! let nephos = nephos::testing::Nephos::start().await?;
//! std::env::set_var("CLOUDINARY_URL", nephos.cloudinary_url());
//! // … the code under test uploads …
//! let cloud = nephos.create_cloud().await?; // an isolated cloud, e.g. one per test
//! nephos.reset().await?;                    // or start over
//! nephos.stop().await;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;

use serde_json::Value as Json;
use tokio::sync::oneshot;

use crate::config::{Config, FileConfig, ServeArgs};

/// A cloud and its credentials, as the control API answers them.
#[derive(Debug, Clone)]
pub struct Cloud {
    pub cloud_name: String,
    pub api_key: String,
    pub api_secret: String,
    /// `cloudinary://KEY:SECRET@CLOUD?upload_prefix=http://127.0.0.1:PORT`
    pub cloudinary_url: String,
}

impl Cloud {
    fn from_json(j: &Json) -> anyhow::Result<Cloud> {
        let field = |k: &str| {
            j.get(k)
                .and_then(Json::as_str)
                .map(str::to_string)
                .ok_or_else(|| anyhow::anyhow!("the control API answered no {k}: {j}"))
        };
        Ok(Cloud {
            cloud_name: field("cloud_name")?,
            api_key: field("api_key")?,
            api_secret: field("api_secret")?,
            cloudinary_url: field("cloudinary_url")?,
        })
    }
}

/// A running ephemeral nephos; stopped by [`Nephos::stop`] (or when the runtime ends).
pub struct Nephos {
    addr: SocketAddr,
    base_url: String,
    cloudinary_url: String,
    client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Nephos {
    /// Starts nephos with the development account (`demo`).
    pub async fn start() -> anyhow::Result<Nephos> {
        Self::start_with(FileConfig::default(), ServeArgs::default()).await
    }

    /// Starts nephos with a configuration (file form and flags); it is always ephemeral and
    /// listens on `127.0.0.1:0`.
    pub async fn start_with(file: FileConfig, args: ServeArgs) -> anyhow::Result<Nephos> {
        let args = ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            ephemeral: true,
            ..args
        };
        let config = Config::from_parts(file, &args)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let server = crate::Server::open(config, listener).await?;
        let addr = server.local_addr();
        let base_url = server.base_url();
        let cloudinary_url = server.cloudinary_url();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Ok(Nephos {
            addr,
            base_url,
            cloudinary_url,
            // Plain HTTP to loopback: no root certificates to load.
            client: reqwest::Client::builder()
                .tls_built_in_native_certs(false)
                .build()
                .map_err(anyhow::Error::from)?,
            shutdown: Some(tx),
            handle: Some(handle),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The first account's `CLOUDINARY_URL` (with `upload_prefix`).
    pub fn cloudinary_url(&self) -> &str {
        &self.cloudinary_url
    }

    async fn control(&self, method: reqwest::Method, path: &str) -> anyhow::Result<Json> {
        let resp = self
            .client
            .request(method, format!("{}/_nephos{path}", self.base_url))
            .header("x-nephos-control", "1")
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await?;
        let status = resp.status();
        let body: Json = resp.json().await?;
        if !status.is_success() {
            anyhow::bail!("control API {path}: {status} {body}");
        }
        Ok(body)
    }

    /// Creates an isolated cloud with generated credentials.
    pub async fn create_cloud(&self) -> anyhow::Result<Cloud> {
        let j = self.control(reqwest::Method::POST, "/clouds").await?;
        Cloud::from_json(&j)
    }

    /// Removes a cloud and everything in it.
    pub async fn delete_cloud(&self, cloud: &str) -> anyhow::Result<()> {
        self.control(reqwest::Method::DELETE, &format!("/clouds/{cloud}"))
            .await
            .map(|_| ())
    }

    /// Resets everything (see `POST /_nephos/reset`).
    pub async fn reset(&self) -> anyhow::Result<()> {
        self.control(reqwest::Method::POST, "/reset")
            .await
            .map(|_| ())
    }

    /// The requests nephos answered, oldest first (see `GET /_nephos/requests`).
    pub async fn requests(&self) -> anyhow::Result<Vec<Json>> {
        let j = self
            .control(reqwest::Method::GET, "/requests?limit=2000")
            .await?;
        Ok(j["requests"].as_array().cloned().unwrap_or_default())
    }

    /// Stops the server and removes its temporary folder.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}
