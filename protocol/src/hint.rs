//! Cache hints. A planning run drives thousands of nodes and a controller through millions
//! of events, each touching a lamp's state that is rarely still in the cache; it knows a
//! few events ahead which lamps come next, and asks for their state early. A hint changes
//! no state and never faults.

/// Asks the CPU to load the cache line holding `p` (a no-op off x86-64). `p` may point
/// anywhere, past a `Vec`'s end say: nothing is read.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is only a hint: it reads nothing architecturally and never faults.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// [`prefetch`] for every cache line of `*value`.
#[inline(always)]
pub fn prefetch_lines<T>(value: &T) {
    let p = value as *const T as *const u8;
    for offset in (0..std::mem::size_of::<T>()).step_by(64) {
        prefetch(p.wrapping_add(offset));
    }
}
