//! The mock LLM provider as a process, for benchmarks and the README demo.
//!
//! `dragoman-mock --listen 127.0.0.1:9999 [--key KEY] [--kind-keys openai=K1,anthropic=K2]
//! [--no-record]`; runs until SIGINT or SIGTERM. Controlled over HTTP (`/_mock/...`).

use std::net::SocketAddr;
use std::process::ExitCode;

use dragoman_mock::ProviderKind;
use dragoman_mock::{MockOptions, MockProvider};

const USAGE: &str = "\
usage: dragoman-mock [--listen ADDR] [--key KEY] [--kind-keys KIND=KEY[,KIND=KEY...]] [--no-record]

  --listen ADDR      loopback address to listen on (default 127.0.0.1:9999; port 0 = any free port)
  --key KEY          credential expected from every provider kind (default: no auth check)
  --kind-keys LIST   per-kind credentials, overriding --key; KIND is openai, azure-openai,
                     anthropic or gemini (may be repeated; --kind-key is accepted too)
  --no-record        do not keep requests for GET /_mock/requests (for benchmarks)

Control: GET|DELETE /_mock/requests, POST|DELETE /_mock/behaviour, POST /_mock/release,
GET /_mock/stats.";

fn parse_kind(s: &str) -> Option<ProviderKind> {
    match s {
        "openai" => Some(ProviderKind::Openai),
        "azure-openai" | "azure" => Some(ProviderKind::AzureOpenai),
        "anthropic" => Some(ProviderKind::Anthropic),
        "gemini" => Some(ProviderKind::Gemini),
        _ => None,
    }
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<MockOptions>, String> {
    let mut opts = MockOptions {
        addr: Some(SocketAddr::from(([127, 0, 0, 1], 9999))),
        ..MockOptions::default()
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => {
                let v = value("--listen")?;
                opts.addr = Some(v.parse().map_err(|e| format!("--listen {v}: {e}"))?);
            }
            "--key" => opts.key = Some(value("--key")?),
            "--kind-keys" | "--kind-key" => {
                for pair in value(&flag)?.split(',').filter(|p| !p.is_empty()) {
                    let (kind, key) = pair
                        .split_once('=')
                        .ok_or_else(|| format!("{flag}: expected KIND=KEY, got {pair}"))?;
                    let kind =
                        parse_kind(kind).ok_or_else(|| format!("{flag}: unknown kind {kind}"))?;
                    opts.kind_keys.push((kind, key.to_owned()));
                }
            }
            "--no-record" => opts.record = false,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Some(opts))
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("dragoman-mock: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mock = match MockProvider::start_with(opts).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("dragoman-mock: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("dragoman-mock listening on {}", mock.url());
    wait_for_signal().await;
    drop(mock);
    ExitCode::SUCCESS
}
