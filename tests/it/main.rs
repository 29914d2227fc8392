//! Integration tests: one binary, modules inside (keeps link time down).

mod cli_errors;
mod common;
mod engine;
mod estimate;
mod gui;
mod hub;
mod reference;
mod torch;
