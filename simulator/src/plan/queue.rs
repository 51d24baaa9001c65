//! The event queue of a planning run: items in time order, ties in the order they were
//! pushed, exactly as one `BinaryHeap` of (time, sequence) would give them.
//!
//! A day of Cambridge under a policy that follows demand is some 25 million queued events
//! (packets and wake-ups; road users come from their own stream, `traffic.rs`); one binary
//! heap spends most of its time moving items through cache misses. Nearly every event lands
//! within the next few minutes (a packet, a node's next wake-up), so the queue is a
//! calendar of two levels:
//!
//! - a ring of buckets covering the near future, each an unsorted `Vec` until its turn;
//! - the bucket being served, split into slots of [`SLOT_MS`], again unsorted `Vec`s. A
//!   slot is sorted when `current` runs short, and its items join `current`, which is
//!   served from its end.
//!
//! Most packets arrive within 50 to 200 ms, inside the bucket being served: they go straight
//! into its slots. Only an item pushed for a slot already taken into `current` (a wake-up
//! due at once, say) waits in a small heap beside it. Before the slots, every such packet
//! went through that heap, and its pops (unpredictable branches at each level) were a
//! tenth of a run. Items beyond the ring wait in an overflow heap and move into the ring
//! as it turns.
//!
//! Buckets are about 4 s wide. Narrower ones scatter the pushes beyond the bucket being
//! served over more `Vec`s, each a cache miss: on paired runs of Cambridge's adaptive day
//! (one core each), 1 s buckets took about 9 % longer than 4 s ones and 250 ms buckets 18 %
//! longer; 16 s buckets were no faster. The slots are few enough (256) for their ends to
//! stay in the cache.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Width of one slot of the bucket being served.
const SLOT_MS: u64 = 16;
/// Slots in a bucket (a power of two).
const SLOTS: usize = 1 << 8;
/// Width of one bucket: 4,096 ms.
const BUCKET_MS: u64 = SLOT_MS * SLOTS as u64;
/// Buckets in the ring (a power of two): 2^9 x 4.096 s, about 35 minutes ahead.
const RING: usize = 1 << 9;
/// A bucket keeps the room it grew to for its next turn up to this many items, a slot up
/// to [`SLOT_ROOM_KEPT`]. Bursts (a refresh to every lamp at the same tick, dusk) grow some
/// buckets and every slot in turn to hundreds or thousands of items, and kept, that room
/// added up to tens of megabytes a run. A slot holds a few items but in a burst.
const BUCKET_ROOM_KEPT: usize = 1024;
const SLOT_ROOM_KEPT: usize = 64;
/// Slots are taken into `current` until it holds this many items (or the bucket's slots
/// run out), so that [`EventQueue::ahead`] sees the items a prefetch needs.
const AHEAD_MIN: usize = 4;

#[derive(Clone, Copy)]
struct Entry<T> {
    t: u64,
    seq: u64,
    item: T,
}

impl<T> Entry<T> {
    /// Whether this entry comes out before `o`: by time, then push order. The one order of
    /// the queue; `Ord` (for the overflow heap) is its reverse.
    fn before(&self, o: &Self) -> bool {
        (self.t, self.seq) < (o.t, o.seq)
    }
}

/// A binary min-heap of entries by (time, sequence), for the late items. `std`'s
/// `BinaryHeap::pop` writes the last item over the root and reads it straight back, a
/// store-to-load of a 32-byte entry that the CPU cannot forward: a stall on every pop.
/// Here the last item stays in registers until it lands.
struct LateHeap<T> {
    data: Vec<Entry<T>>,
}

impl<T: Copy> LateHeap<T> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The earliest entry.
    fn peek(&self) -> Option<&Entry<T>> {
        self.data.first()
    }

    #[inline(always)]
    fn push(&mut self, entry: Entry<T>) {
        let hole = self.data.len();
        self.data.push(entry);
        self.rise(hole, entry);
    }

    /// Puts `entry` at `hole` or, moving parents down, where it belongs above it.
    #[inline(always)]
    fn rise(&mut self, mut hole: usize, entry: Entry<T>) {
        while hole > 0 {
            let parent = (hole - 1) / 2;
            if !entry.before(&self.data[parent]) {
                break;
            }
            self.data[hole] = self.data[parent];
            hole = parent;
        }
        self.data[hole] = entry;
    }

    fn pop(&mut self) -> Option<Entry<T>> {
        let last = self.data.pop()?;
        let n = self.data.len();
        if n == 0 {
            return Some(last);
        }
        let root = self.data[0];
        // The root's hole sinks to the bottom along the earlier child, then the last entry
        // rises into it (fewer comparisons than sifting it down: it nearly always belongs
        // near the bottom).
        let mut hole = 0;
        loop {
            let mut child = 2 * hole + 1;
            if child >= n {
                break;
            }
            if child + 1 < n && self.data[child + 1].before(&self.data[child]) {
                child += 1;
            }
            self.data[hole] = self.data[child];
            hole = child;
        }
        self.rise(hole, last);
        Some(root)
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Entry<T> {
    // Reversed: `BinaryHeap` is a max-heap and the earliest must come out first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.t, o.seq).cmp(&(self.t, self.seq))
    }
}

/// A time-ordered queue; see the module docs.
///
/// Slots are numbered from `origin_ms` across buckets: slot `s` is in bucket `s / SLOTS`.
/// Every item of a slot before `next_slot` is in `current` or `late`, and every other item
/// is in a later slot, so the earliest item is the earlier of `current`'s last and
/// `late`'s root.
pub(crate) struct EventQueue<T> {
    origin_ms: u64,
    /// The bucket being served (absolute index from `origin_ms`).
    cursor: u64,
    /// The first slot not yet taken into `current`; at least the first of the bucket being
    /// served, at most the first of the next.
    next_slot: u64,
    /// The untaken slots of the bucket being served: slot s is `slots[s % SLOTS]`.
    slots: Vec<Vec<Entry<T>>>,
    /// Items of the taken slots, latest first: the next one is at the end.
    current: Vec<Entry<T>>,
    /// Room for sorting a slot, kept between slots.
    spare: Vec<Entry<T>>,
    /// Items pushed for a taken slot (or before it) after it was taken.
    late: LateHeap<T>,
    /// Bucket b (for cursor < b < cursor + RING) is `ring[b % RING]`.
    ring: Vec<Vec<Entry<T>>>,
    in_ring: usize,
    overflow: BinaryHeap<Entry<T>>,
    seq: u64,
}

impl<T: Copy> EventQueue<T> {
    /// An empty queue; no item may be earlier than `origin_ms`.
    pub fn new(origin_ms: u64) -> Self {
        EventQueue {
            origin_ms,
            cursor: 0,
            next_slot: 0,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            current: Vec::new(),
            spare: Vec::new(),
            late: LateHeap { data: Vec::new() },
            ring: (0..RING).map(|_| Vec::new()).collect(),
            in_ring: 0,
            overflow: BinaryHeap::new(),
            seq: 0,
        }
    }

    fn slot(&self, t: u64) -> u64 {
        t.saturating_sub(self.origin_ms) / SLOT_MS
    }

    /// Where slot `s` of the bucket being served is kept in `slots`.
    fn slot_index(s: u64) -> usize {
        (s % SLOTS as u64) as usize
    }

    fn bucket(&self, t: u64) -> u64 {
        t.saturating_sub(self.origin_ms) / BUCKET_MS
    }

    /// The first slot of the bucket after the one being served.
    fn slots_end(&self) -> u64 {
        (self.cursor + 1) * SLOTS as u64
    }

    // Inlined with `place` and the late heap's push, so that an entry is written where it
    // goes, field by field: handed over in memory, it was read back 16 bytes at a time just
    // after its fields were stored, a load the CPU cannot forward from the stores (the
    // stall was most of `place`'s samples).
    #[inline(always)]
    pub fn push(&mut self, t: u64, item: T) {
        self.seq += 1;
        let entry = Entry {
            t,
            seq: self.seq,
            item,
        };
        self.place(entry);
    }

    #[inline(always)]
    fn place(&mut self, entry: Entry<T>) {
        let s = self.slot(entry.t);
        if s < self.next_slot {
            // Due in a slot already taken (or, pushed into the past, at once).
            self.late.push(entry);
        } else if s < self.slots_end() {
            self.slots[Self::slot_index(s)].push(entry);
        } else {
            self.place_beyond(entry);
        }
    }

    /// [`EventQueue::place`] for an entry beyond the bucket being served.
    #[inline(always)]
    fn place_beyond(&mut self, entry: Entry<T>) {
        let b = self.bucket(entry.t);
        if b < self.cursor + RING as u64 {
            self.ring[(b % RING as u64) as usize].push(entry);
            self.in_ring += 1;
        } else {
            self.overflow.push(entry);
        }
    }

    /// The earliest item and its time.
    pub fn pop(&mut self) -> Option<(u64, T)> {
        let e = if self.next_is_late()? {
            self.late.pop()
        } else {
            self.current.pop()
        }?;
        Some((e.t, e.item))
    }

    /// The time of the earliest item.
    pub fn peek_t(&mut self) -> Option<u64> {
        Some(if self.next_is_late()? {
            self.late.peek()?.t
        } else {
            self.current.last()?.t
        })
    }

    /// The item `d` places after the next in `current` (the late heap is not looked at): a
    /// guess for prefetching, not always what pops `d` items later.
    pub fn ahead(&self, d: usize) -> Option<&T> {
        let k = self.current.len().checked_sub(1 + d)?;
        Some(&self.current[k].item)
    }

    /// The item that comes out next, if no slot need be taken for it (for prefetching).
    pub fn peek_item(&self) -> Option<&T> {
        if self.next_is_late_now()? {
            self.late.peek().map(|e| &e.item)
        } else {
            self.current.last().map(|e| &e.item)
        }
    }

    /// The items that may come out of the late heap after its next one (the root's
    /// children): a guess for prefetching, like [`EventQueue::ahead`].
    pub fn late_after_next(&self) -> impl Iterator<Item = &T> {
        self.late.data.iter().skip(1).take(2).map(|e| &e.item)
    }

    /// Takes slots into `current` while it runs short, then turns the ring if nothing is
    /// left before it, and says where the earliest item is (None: the queue is empty).
    #[inline]
    fn next_is_late(&mut self) -> Option<bool> {
        // Every peek and pop comes here; a slot is taken every few pops, apart.
        if self.current.len() < AHEAD_MIN && self.next_slot < self.slots_end() {
            self.take_slots();
        }
        self.next_is_late_now().or_else(|| self.turn())
    }

    /// Whether the earliest item is in `late` rather than `current` (None: both are empty).
    #[inline]
    fn next_is_late_now(&self) -> Option<bool> {
        match (self.current.last(), self.late.peek()) {
            (Some(c), Some(l)) => Some(l.before(c)),
            (None, Some(_)) => Some(true),
            (Some(_), None) => Some(false),
            (None, None) => None,
        }
    }

    /// Takes the next slots of the bucket being served into `current`, sorted, until it
    /// holds [`AHEAD_MIN`] items or the bucket's slots run out.
    #[inline(never)]
    fn take_slots(&mut self) {
        let end = self.slots_end();
        while self.current.len() < AHEAD_MIN && self.next_slot < end {
            let k = Self::slot_index(self.next_slot);
            self.next_slot += 1;
            if self.slots[k].is_empty() {
                continue;
            }
            let mut taken = std::mem::take(&mut self.slots[k]);
            let mut sorted = std::mem::take(&mut self.spare);
            self.sort_slot(&taken, &mut sorted);
            // What is left in `current` comes before the slot: it goes at the end.
            sorted.extend_from_slice(&self.current);
            // The slot keeps its own room, unless a burst made it large; `current` and
            // `spare` swap theirs.
            taken.clear();
            if taken.capacity() <= SLOT_ROOM_KEPT {
                self.slots[k] = taken;
            }
            self.current.clear();
            self.spare = std::mem::replace(&mut self.current, sorted);
        }
    }

    /// Puts a slot's items into `out` latest first, by a counting sort on their
    /// millisecond within the slot. Items of a slot with the same time are in push order
    /// (pushes append, and a bucket's items reach their slots in the order they came, those
    /// from the overflow first and in order), so taking them last to first within each
    /// millisecond gives exactly the reverse of (time, sequence). A comparison sort of the
    /// slots was 4 % of a run.
    fn sort_slot(&self, items: &[Entry<T>], out: &mut Vec<Entry<T>>) {
        let ms = |e: &Entry<T>| (e.t.saturating_sub(self.origin_ms) % SLOT_MS) as usize;
        out.clear();
        if let [only] = items {
            out.push(*only);
            return;
        }
        let mut starts = [0usize; SLOT_MS as usize];
        for e in items {
            starts[ms(e)] += 1;
        }
        let mut next = 0;
        for s in starts.iter_mut().rev() {
            (*s, next) = (next, next + *s);
        }
        out.resize(items.len(), items[0]);
        for e in items.iter().rev() {
            let m = ms(e);
            out[starts[m]] = *e;
            starts[m] += 1;
        }
    }

    /// [`EventQueue::next_is_late`] with `current`, `late` and the bucket's slots empty:
    /// turns the ring to the next items.
    #[cold]
    #[inline(never)]
    fn turn(&mut self) -> Option<bool> {
        loop {
            if self.in_ring == 0 {
                // Nothing in the ring: jump to the overflow's first bucket.
                let next = self.bucket(self.overflow.peek()?.t);
                self.cursor = next.max(self.cursor + 1) - 1;
            }
            self.advance();
            self.take_slots();
            if let Some(late) = self.next_is_late_now() {
                return Some(late);
            }
        }
    }

    /// Serves the next bucket: its items go into their slots, and items from the overflow
    /// that the ring now reaches move in.
    fn advance(&mut self) {
        debug_assert!(self.current.is_empty() && self.late.is_empty());
        self.cursor += 1;
        self.next_slot = self.cursor * SLOTS as u64;
        let k = (self.cursor % RING as u64) as usize;
        let mut bucket = std::mem::take(&mut self.ring[k]);
        self.in_ring -= bucket.len();
        for e in bucket.drain(..) {
            let k = Self::slot_index(self.slot(e.t));
            self.slots[k].push(e);
        }
        // The bucket keeps its room for its next turn, unless a burst made it large.
        if bucket.capacity() <= BUCKET_ROOM_KEPT {
            self.ring[k] = bucket;
        }
        let horizon = self.cursor + RING as u64;
        while self
            .overflow
            .peek()
            .is_some_and(|e| self.bucket(e.t) < horizon)
        {
            let e = self.overflow.pop().expect("peeked");
            self.place(e);
        }
    }
}

/// Values parked while the events that carry them wait in the queue: an event holds a
/// `u32` key instead of the value, which keeps every event small.
pub(crate) struct Parked<T> {
    pub(crate) slots: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Parked<T> {
    fn default() -> Self {
        Parked {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Parked<T> {
    pub(crate) fn put(&mut self, value: T) -> u32 {
        match self.free.pop() {
            Some(k) => {
                self.slots[k as usize] = Some(value);
                k
            }
            None => {
                self.slots.push(Some(value));
                (self.slots.len() - 1) as u32
            }
        }
    }

    /// The value parked under `k`; each key is taken (or released) once.
    pub(crate) fn take(&mut self, k: u32) -> T {
        let value = self.slots[k as usize]
            .take()
            .expect("a parked value is taken once");
        self.free.push(k);
        value
    }

    /// The value parked under `k`, left in place (`None`: none is).
    pub(crate) fn get(&self, k: u32) -> Option<&T> {
        self.slots.get(k as usize)?.as_ref()
    }

    /// Drops the value parked under `k`.
    pub(crate) fn release(&mut self, k: u32) {
        self.take(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Busy buckets, with items at the same instants pushed straight in and through the
    /// overflow: still one heap's order.
    #[test]
    fn busy_buckets_pop_in_the_order_of_one_heap() {
        let mut q = EventQueue::new(0);
        let mut reference = BinaryHeap::new();
        let mut x: u64 = 7;
        let mut next = || {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            x >> 33
        };
        let (mut now, mut seq) = (0u64, 0u64);
        for k in 0..40_000usize {
            let r = next();
            if r % 3 == 0 {
                let got = q.pop();
                let want = reference.pop().map(|e: Entry<usize>| (e.t, e.item));
                assert_eq!(got, want, "pop {k}");
                if let Some((t, _)) = got {
                    now = t;
                }
                continue;
            }
            // Whole 100 ms steps, so that many items share an instant; some far enough
            // ahead to wait in the overflow first.
            let ahead_ms = match r % 7 {
                0 => (next() % 40) * 100 * 1_000,
                _ => (next() % 300) * 100,
            };
            let t = (now / 100) * 100 + ahead_ms;
            seq += 1;
            q.push(t, k);
            reference.push(Entry { t, seq, item: k });
        }
        loop {
            let got = q.pop();
            assert_eq!(got, reference.pop().map(|e| (e.t, e.item)));
            if got.is_none() {
                break;
            }
        }
    }

    proptest! {
        /// Whatever the pushes, peeks and pops, items come out exactly as from one binary heap of
        /// (time, push order): the order a run's determinism rests on.
        #[test]
        fn pops_in_the_order_of_one_heap(
            ops in proptest::collection::vec((0u64..4_000_000, 0u8..6), 1..600),
        ) {
            let mut q = EventQueue::new(1_000);
            let mut reference = BinaryHeap::new();
            let mut seq = 0u64;
            let mut now = 1_000u64;
            for (k, (dt, op)) in ops.iter().enumerate() {
                if *op == 0 {
                    let peeked = q.peek_t();
                    let got = q.pop();
                    prop_assert_eq!(peeked, got.as_ref().map(|(t, _)| *t));
                    let want = reference.pop().map(|e: Entry<usize>| (e.t, e.item));
                    prop_assert_eq!(got, want);
                    if let Some((t, _)) = got {
                        now = t;
                    }
                } else if *op == 4 {
                    // A peek may turn the ring ahead of the present; later pushes near
                    // the present must still come out first.
                    prop_assert_eq!(q.peek_t(), reference.peek().map(|e| e.t));
                } else {
                    // Mostly near the present, sometimes far beyond the ring, sometimes at
                    // the very same instant or within a slot or two of it.
                    let t = match op {
                        1 => now + dt % 5_000,
                        2 => now + dt * 1_000,
                        5 => now + dt % 40,
                        _ => now,
                    };
                    seq += 1;
                    q.push(t, k);
                    reference.push(Entry { t, seq, item: k });
                }
            }
            loop {
                let got = q.pop();
                let want = reference.pop().map(|e| (e.t, e.item));
                prop_assert_eq!(got, want);
                if got.is_none() {
                    break;
                }
            }
        }
    }
}
