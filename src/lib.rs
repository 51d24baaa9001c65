//! The `lamplighter` package: the command line (`src/main.rs`) and [`system`], which
//! composes the running system from the crates. It is a library too so that the end-to-end
//! tests start exactly what `demo` and `serve` start.

pub mod cli_lorawan;
pub mod cli_nodes;
pub mod cli_sim;
pub mod cli_store;
mod lorawan_bench;
pub mod lorawan_system;
pub mod system;
