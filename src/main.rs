//! The oomlab binary: argument parsing and dispatch only.

use clap::Parser;

// Every byte the worker allocates is counted; the simulated capacity is enforced here.
#[global_allocator]
static ALLOC: oomlab::measure::alloc::CountingAlloc = oomlab::measure::alloc::CountingAlloc;

fn main() {
    let cli = oomlab::cli::Cli::parse();
    if !matches!(cli.command, Some(oomlab::cli::Command::Worker(_))) {
        // A bug must still read as one sentence, not a Rust panic dump. (The worker keeps the
        // default hook: its stderr goes to the supervisor, which records it.)
        std::panic::set_hook(Box::new(|info| {
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            eprintln!(
                "oomlab: internal error{at}: {msg}; this is a bug, please report it with the command you ran"
            );
        }));
    }
    let code = oomlab::cli::main_with(cli, &oomlab::gui::run);
    std::process::exit(code);
}
