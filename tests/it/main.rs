//! Integration tests: one binary, modules inside (keeps link time down).

mod auto;
mod cli_errors;
mod cli_machine;
mod common;
mod engine;
mod estimate;
mod explain_cli;
mod gui;
mod hub;
mod lesson;
mod papercuts;
mod reference;
mod torch;
