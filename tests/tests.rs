//! Every integration test of the `lamplighter` binary and the composed system, as modules of
//! one test binary (ripgrep's layout): one link instead of one per file, and one harness,
//! `util`, that all of them use. Run one with `cargo test --test integration MODULE::`.

mod util;

mod bench_ingest;
mod browser;
mod cli;
mod end_to_end;
mod export_half_hourly;
mod external_network;
mod field_realities;
mod influx_sink;
mod layering;
mod lorawan_cli;
mod operator_state;
mod sim_live_udp;
mod store_cli;
mod store_crash;
mod users_cli;
