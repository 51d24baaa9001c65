//! CSV as every export writes it: the `csv` crate does the quoting, and [`text_cell`] is the
//! one guard against spreadsheet formulas.
//!
//! A council engineer opens exports in a spreadsheet. A text cell that begins with `=`, `+`,
//! `-`, `@`, a tab or a carriage return would be run there as a formula (OWASP's "CSV
//! injection"), so such a cell gets a leading `'`. The guard is for text that a person or the
//! network chose (user names, reasons, notes, targets); numbers are written as they are, so a
//! negative reading stays a number.
//!
//! ```
//! use lamplighter_controller::csv_export::{text_cell, writer};
//! assert_eq!(text_cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
//! assert_eq!(text_cell("lamp 12"), "lamp 12");
//! let mut w = writer(Vec::new());
//! w.write_record(["a,b", &text_cell("-1"), "-1"]).unwrap();
//! assert_eq!(String::from_utf8(w.into_inner().unwrap()).unwrap(), "\"a,b\",'-1,-1\n");
//! ```

use std::borrow::Cow;
use std::io;

/// `s` made safe to open in a spreadsheet: prefixed with `'` when it begins with a character
/// that starts a formula.
pub fn text_cell(s: &str) -> Cow<'_, str> {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{s}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// A CSV writer over `out` as every export uses it: comma-separated, `\n` line ends, fields
/// quoted only where they must be, every record the same length.
pub fn writer<W: io::Write>(out: W) -> csv::Writer<W> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .quote_style(csv::QuoteStyle::Necessary)
        .from_writer(out)
}
