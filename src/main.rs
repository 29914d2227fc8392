//! The oomlab binary: argument parsing and dispatch only.

use clap::Parser;

// Every byte the worker allocates is counted; the simulated capacity is enforced here.
#[global_allocator]
static ALLOC: oomlab::measure::alloc::CountingAlloc = oomlab::measure::alloc::CountingAlloc;

fn main() {
    let cli = oomlab::cli::Cli::parse();
    let code = oomlab::cli::main_with(cli, &oomlab::gui::run);
    std::process::exit(code);
}
