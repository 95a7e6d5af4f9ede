use clap::Parser;
use nephos::config::{Cli, Command, Config};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("NEPHOS_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::load(&args)?;
    let addr = config.listen_addr()?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr}: {e} (choose another with --listen or NEPHOS_LISTEN)"
        )
    })?;
    let addr = listener.local_addr()?;
    println!("nephos listening on http://{addr}");
    if config.dev_account {
        println!("no account configured: using the development account");
    }
    for line in nephos::cloudinary_urls(&config, addr) {
        println!("{line}");
    }
    nephos::serve(config, listener, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
