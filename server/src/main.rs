//! `byol`: the server (`byol serve`) and its command-line client (`byol machine …`,
//! `byol install …`). Everything lives in the library; this file only parses arguments.

use clap::{Parser, Subcommand};

use byol_server::{cli, config, serve};

#[derive(Parser)]
#[command(
    name = "byol",
    version,
    about = "byol: Bring Your Own Linux, a netboot installer for bare-metal machines"
)]
struct Cli {
    /// Client flags given before the subcommand (`byol --server URL machine list`).
    #[command(flatten)]
    client: cli::ClientFlags,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
// parsed once at start: the variants' sizes do not matter
#[allow(clippy::large_enum_variant)]
enum Cmd {
    /// Run the boot server (HTTP API, iPXE endpoints, TFTP).
    Serve(config::ServeArgs),
    /// Machines: add, list, show, delete.
    Machine {
        #[command(flatten)]
        client: cli::ClientFlags,
        #[command(subcommand)]
        cmd: cli::MachineCmd,
    },
    /// Storage schemes (named layouts): add, list, show, delete.
    Scheme {
        #[command(flatten)]
        client: cli::ClientFlags,
        #[command(subcommand)]
        cmd: cli::SchemeCmd,
    },
    /// OVH-style API keys for OVH's clients: create, list, revoke, validate.
    ApiKey {
        #[command(flatten)]
        client: cli::ClientFlags,
        #[command(subcommand)]
        cmd: cli::ApiKeyCmd,
    },
    /// Installs: start, status [--follow], cancel.
    Install {
        #[command(flatten)]
        client: cli::ClientFlags,
        #[command(subcommand)]
        cmd: cli::InstallCmd,
    },
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BYOL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json { b.json().init() } else { b.init() }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Serve(mut args) => {
            // `byol --data-dir D serve`: the client flag names the server's data dir too
            if args.data_dir.is_none() {
                args.data_dir = cli.client.data_dir.clone();
            }
            match args.resolve() {
                Ok(cfg) => {
                    init_logs(cfg.log_json);
                    serve::run(cfg).await
                }
                Err(e) => Err(e),
            }
        }
        Cmd::Machine { client, cmd } => {
            cli::machine(&cli::ClientFlags::resolve(&cli.client, &client), cmd).await
        }
        Cmd::Scheme { client, cmd } => {
            cli::scheme(&cli::ClientFlags::resolve(&cli.client, &client), cmd).await
        }
        Cmd::ApiKey { client, cmd } => {
            cli::api_key(&cli::ClientFlags::resolve(&cli.client, &client), cmd).await
        }
        Cmd::Install { client, cmd } => {
            cli::install(&cli::ClientFlags::resolve(&cli.client, &client), cmd).await
        }
    };
    if let Err(e) = res {
        eprintln!("byol: {e:#}");
        std::process::exit(1);
    }
}
