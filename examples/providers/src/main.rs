//! `provider [--listen 127.0.0.1:8090]`: serves the example provider (see
//! the library docs). The API key callers must present comes from the
//! `PROVIDER_API_KEY` environment variable; without it, none is checked.

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let listen = match (args.next().as_deref(), args.next()) {
        (Some("--listen"), Some(address)) => address,
        (None, _) => "127.0.0.1:8090".to_string(),
        _ => {
            eprintln!("usage: provider [--listen HOST:PORT]");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("provider: cannot listen on {listen}: {err}");
            std::process::exit(1);
        }
    };
    let api_key = std::env::var("PROVIDER_API_KEY").ok();
    let provider = eventhost_provider::start(listener, api_key);
    println!("provider listening on {}", provider.url());
    tokio::signal::ctrl_c().await.ok();
}
