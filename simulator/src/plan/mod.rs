//! Planning mode (in progress).
