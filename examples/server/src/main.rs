//! `tiermap-server [PORT] [--max-body-bytes N] [--max-keys N] [--max-cache-entries N]
//! [--pool-ceiling N] [--pool-max-idle N]`
//!
//! Listens on 127.0.0.1:PORT (0, the default, picks a free port) and prints the bound address
//! (`127.0.0.1:PORT`) as the first line on stdout. Stops on Ctrl-C or SIGTERM after finishing
//! the requests in flight.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use tiermap_server::{serve_with_shutdown, AppState, Limits};

const USAGE: &str = "usage: tiermap-server [PORT] [--max-body-bytes N] [--max-keys N] \
                     [--max-cache-entries N] [--pool-ceiling N] [--pool-max-idle N]";

fn parse_args() -> Result<(u16, Limits), String> {
    let mut port = 0u16;
    let mut limits = Limits::default();
    let mut args = std::env::args().skip(1);
    let mut port_seen = false;
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<usize, String> {
            let value = args.next().ok_or_else(|| format!("{name} needs a value"))?;
            value
                .parse()
                .map_err(|_| format!("{name}: not a number: {value}"))
        };
        match arg.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--max-body-bytes" => limits.max_body_bytes = number(&arg)?,
            "--max-keys" => limits.max_keys_per_request = number(&arg)?,
            "--max-cache-entries" => limits.max_cache_entries = number(&arg)?,
            "--pool-ceiling" => limits.pool_capacity_ceiling = number(&arg)?,
            "--pool-max-idle" => limits.pool_max_idle = number(&arg)?,
            _ if !port_seen && !arg.starts_with('-') => {
                port = arg.parse().map_err(|_| format!("not a port: {arg}"))?;
                port_seen = true;
            }
            _ => return Err(format!("unexpected argument: {arg}")),
        }
    }
    Ok((port, limits))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let (port, limits) = match parse_args() {
        Ok(parsed) => parsed,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("tiermap-server: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let listener =
        match tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("tiermap-server: cannot bind 127.0.0.1:{port}: {e}");
                return ExitCode::FAILURE;
            }
        };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("tiermap-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{addr}");
        let _ = stdout.flush();
    }
    eprintln!("tiermap-server: listening on http://{addr} ({limits:?})");
    let state = AppState::new(limits);
    match serve_with_shutdown(listener, state, shutdown_signal()).await {
        Ok(()) => {
            eprintln!("tiermap-server: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tiermap-server: {e}");
            ExitCode::FAILURE
        }
    }
}
