//! oomlab: a lab for GPU out-of-memory experiments over real candle forward passes.
//!
//! Two faces (the eframe GUI in [`gui`] and the command line in [`cli`]) over one engine:
//! [`sweep`] drives [`search`] (pure boundary search) and a [`worker`] process that runs the
//! [`models`] and measures memory ([`measure`]); [`report`] keeps the journal and writes results.

pub mod calibrate;
pub mod catalog;
pub mod cli;
pub mod estimate;
pub mod explain;
pub mod families;
pub mod forecast;
pub mod gui;
pub mod lesson;
pub mod measure;
pub mod models;
pub mod plan;
pub mod precision;
pub mod presets;
pub mod report;
pub mod runtime;
pub mod search;
pub mod signals;
pub mod sweep;
pub mod units;
pub mod worker;
