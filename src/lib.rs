//! The `lamplighter` package: the command line (`src/main.rs`) and [`system`], which
//! composes the running system from the crates. It is a library too so that the end-to-end
//! tests start exactly what `demo` and `serve` start.

/// `println!` that hands a closed stdout (`lamplighter ... | head`) up as an error, which
/// `main` treats as a quiet end, instead of panicking. Use it in functions returning
/// `anyhow::Result`.
#[macro_export]
macro_rules! lamplighter_print_line {
    ($($arg:tt)*) => {
        $crate::print_line(format_args!($($arg)*))?
    };
}

pub fn print_line(args: std::fmt::Arguments) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)?;
    out.write_all(b"\n")
}

pub mod cli_accounts;
pub mod cli_lorawan;
pub mod cli_nodes;
pub mod cli_sim;
pub mod cli_store;
pub mod ingest_bench;
mod lorawan_bench;
pub mod lorawan_system;
pub mod system;
