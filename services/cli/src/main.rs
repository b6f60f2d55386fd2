//! `alphadome`: run the platform, manage tenants, chat with a bot locally.

use std::process::ExitCode;

use alphadome_cli::args::{self, Cli};
use clap::Parser;

/// mimalloc instead of the system allocator: the services allocate and free
/// many small buffers per message (HTTP bodies, protobuf, JSON), and glibc's
/// malloc/free took 11 % of the ingress's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    args::forget_empty_settings();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(alphadome_cli::commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
