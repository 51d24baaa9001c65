//! Road users of a planning run, made once and read by every policy's run.
//!
//! Who walks or drives where, and whether a sensor sees them, does not depend on the
//! policy: the traffic has its own random stream and detection is a hash of (trip, lamp,
//! seed). So the road users are generated once per run, as a time-ordered stream of
//! [`SensorRec`]s (a road user entering a lamp's sensor range), and each policy's run
//! merges that stream with its own event queue. Before, every policy generated the same
//! trips again and walked each one lamp by lamp through its queue: a third of its events.
//!
//! The stream is cut into five-minute [`CHUNK_MS`] chunks. A trip is laid out whole when it
//! starts (its speed is fixed, so the time it reaches each lamp is known), its records go
//! to the chunks they fall in, and a chunk is sorted once when no trip still to start can
//! reach it. Whichever run first needs a chunk makes it; a chunk is freed when every run
//! has read it. With a core to spare (one policy on a two-core machine), a producer thread
//! makes chunks ahead of the run, a bounded way ahead.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lamplighter_edge::RoadUser;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::regions::Region;
use super::road_users::{speed_mps, DETECTION_P, SENSOR_RANGE_M, USERS};
use super::shared::{Shared, MIN_MS};

/// Road users are generated in slots of this length.
const SLOT_MS: u64 = 300_000;
/// The stream is made and shared in chunks of this length (a year of a town in 24 regions
/// is then 2.5 million chunks to keep account of).
pub(crate) const CHUNK_MS: u64 = 300_000;
/// How many chunks a producer thread may run ahead of the slowest reader.
const LOOKAHEAD_CHUNKS: usize = 6;

/// A road user entering the sensor range of a lamp.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct SensorRec {
    pub t: u64,
    pub lamp: u32,
    /// From entering the sensor range to passing the column.
    pub pass_in_ms: u16,
    /// The road user's kind (index into [`USERS`]) in the low bits; [`DETECTED`] set when
    /// the sensor sees it; [`JUDGED`] when its passage counts towards exposure, with the
    /// classes below design its zone's demand allows then (see [`Shared::class_drop`]) in
    /// the bits of [`CLASS_DROP`]. What a passage required does not depend on the policy,
    /// so it is worked out here, once for all the runs.
    flags: u8,
}

const DETECTED: u8 = 0x80;
const JUDGED: u8 = 0x40;
const CLASS_DROP: u8 = 0x0C;

impl SensorRec {
    pub fn who(&self) -> RoadUser {
        USERS[(self.flags & 0x3) as usize]
    }

    pub fn detected(&self) -> bool {
        self.flags & DETECTED != 0
    }

    /// Whether the passage is judged: before the run's end, dark and away from twilight.
    pub fn judged(&self) -> bool {
        self.flags & JUDGED != 0
    }

    /// For a judged passage, the classes below design the demand allowed when it passed.
    pub fn class_drop(&self) -> usize {
        ((self.flags & CLASS_DROP) >> 2) as usize
    }
}

fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn unit(x: u64) -> f64 {
    (mix64(x) >> 11) as f64 / (1u64 << 53) as f64
}

/// The generator: trips started slot by slot, their records waiting in the chunks they
/// fall in until those are complete.
struct Generator {
    rng: ChaCha8Rng,
    next_trip: u32,
    /// Start of the next slot to generate.
    next_slot: u64,
    /// Chunks made so far; `pending[0]` is chunk `made`, by region.
    made: usize,
    pending: VecDeque<Vec<Vec<SensorRec>>>,
    /// Each lamp's region.
    region_of: Vec<u16>,
    regions: usize,
    /// Room for [`sort_by_time`], kept between chunks.
    scratch: Vec<SensorRec>,
}

/// Bits of a record's time within its chunk that each pass of [`sort_by_time`] sorts on.
const RADIX_BITS: u32 = 10;
const _: () = assert!(
    CHUNK_MS <= 1 << (2 * RADIX_BITS),
    "two passes cover a chunk"
);

/// Sorts one chunk's records by time, ties in the order they came (as a stable sort by `t`
/// would), for records at or after `chunk_start` and within [`CHUNK_MS`] of it. Two
/// counting passes over the time within the chunk, low bits then high: a day of Cambridge is
/// ten million records, and a comparison sort of them was a twentieth of a planning run.
fn sort_by_time(recs: &mut Vec<SensorRec>, chunk_start: u64, scratch: &mut Vec<SensorRec>) {
    const BUCKETS: usize = 1 << RADIX_BITS;
    let digit = |r: &SensorRec, pass: u32| {
        debug_assert!((chunk_start..chunk_start + CHUNK_MS).contains(&r.t));
        ((r.t - chunk_start) >> (pass * RADIX_BITS)) as usize & (BUCKETS - 1)
    };
    for pass in 0..2 {
        let mut starts = [0usize; BUCKETS];
        for r in recs.iter() {
            starts[digit(r, pass)] += 1;
        }
        let mut next = 0;
        for s in starts.iter_mut() {
            (*s, next) = (next, next + *s);
        }
        scratch.clear();
        scratch.resize(recs.len(), SensorRec::default());
        for r in recs.iter() {
            let d = digit(r, pass);
            scratch[starts[d]] = *r;
            starts[d] += 1;
        }
        std::mem::swap(recs, scratch);
    }
}

impl Generator {
    fn new(sh: &Shared, regions: &[Region]) -> Self {
        let mut region_of = vec![0; sh.town.lamps.len()];
        for (r, region) in regions.iter().enumerate() {
            for &g in &region.lamps {
                region_of[g as usize] = r as u16;
            }
        }
        Generator {
            rng: ChaCha8Rng::seed_from_u64(sh.seed),
            next_trip: 0,
            next_slot: sh.start,
            made: 0,
            pending: VecDeque::new(),
            region_of,
            regions: regions.len().max(1),
            scratch: Vec::new(),
        }
    }

    /// The next chunk of each region, sorted by time (ties in the order the records were
    /// made).
    fn next_chunk(&mut self, sh: &Shared) -> Vec<Vec<SensorRec>> {
        let chunk_end = sh.start + (self.made as u64 + 1) * CHUNK_MS;
        // Every record lies at or after its trip's slot: once the slots up to the chunk's
        // end are out, no later trip can reach it.
        while self.next_slot < chunk_end && self.next_slot < sh.end {
            let slot = self.next_slot;
            self.generate_slot(sh, slot);
            self.next_slot += SLOT_MS;
        }
        let mut chunk = self
            .pending
            .pop_front()
            .unwrap_or_else(|| vec![Vec::new(); self.regions]);
        let chunk_start = sh.start + self.made as u64 * CHUNK_MS;
        self.made += 1;
        for region in &mut chunk {
            sort_by_time(region, chunk_start, &mut self.scratch);
        }
        chunk
    }

    fn put(&mut self, sh: &Shared, rec: SensorRec) {
        let k = ((rec.t - sh.start) / CHUNK_MS) as usize - self.made;
        if self.pending.len() <= k {
            let regions = self.regions;
            self.pending
                .resize_with(k + 1, || vec![Vec::new(); regions]);
        }
        self.pending[k][self.region_of[rec.lamp as usize] as usize].push(rec);
    }

    fn generate_slot(&mut self, sh: &Shared, now: u64) {
        // Road users only matter while lamps may be lit: skip slots in full daylight.
        let lit = (0..=7).any(|k| sh.dark_at((now + k * 5 * MIN_MS).saturating_sub(15 * MIN_MS)));
        if !lit {
            return;
        }
        let mid = now + SLOT_MS / 2;
        for z in 0..sh.zones.len() {
            let rates = sh.rates_per_h(z, mid);
            let n_lamps = sh.town.zones[z].lamps.len() as u32;
            for (k, who) in USERS.iter().enumerate() {
                // Trips run from a random lamp to the zone's end, covering half the zone
                // on average, so twice the flow starts to give the flow past each lamp.
                let lambda = rates[k] * 2.0 * SLOT_MS as f64 / 3_600_000.0;
                let count = poisson(&mut self.rng, lambda);
                for _ in 0..count {
                    let t = now + self.rng.gen_range(0..SLOT_MS);
                    let pos = self.rng.gen_range(0..n_lamps);
                    let dir = if sh.zones[z].one_way || self.rng.gen_bool(0.5) {
                        1
                    } else {
                        -1
                    };
                    let speed = (speed_mps(*who) * self.rng.gen_range(0.8..1.2)) as f32;
                    let trip = self.next_trip;
                    self.next_trip = self.next_trip.wrapping_add(1);
                    let lead = (SENSOR_RANGE_M / speed as f64 * 1000.0) as u64;
                    let in_range = t.saturating_sub(lead).max(now);
                    self.lay_out_trip(sh, trip, z, pos, dir, k as u8, speed, in_range, t);
                }
            }
        }
    }

    /// The records of one trip: the road user enters the range of the `pos`-th lamp of
    /// zone `z` at `in_range`, passes it at `t_pass` and goes on lamp by lamp to the zone's
    /// end (or the run's).
    #[allow(clippy::too_many_arguments)]
    fn lay_out_trip(
        &mut self,
        sh: &Shared,
        trip: u32,
        z: usize,
        mut pos: u32,
        dir: i8,
        who: u8,
        speed: f32,
        mut in_range: u64,
        mut t_pass: u64,
    ) {
        let lamps = &sh.town.zones[z].lamps;
        let n_lamps = lamps.len() as i64;
        let speed = speed as f64;
        while in_range < sh.end {
            let lamp = lamps[pos as usize].0;
            let seen = unit((trip as u64).wrapping_mul(0x1_0000_0001) ^ lamp as u64 ^ sh.seed)
                < DETECTION_P;
            let pass_in_ms = (t_pass - in_range) as u16;
            let passes_at = in_range + pass_in_ms as u64;
            let judged = if passes_at < sh.end && sh.judged(passes_at) {
                let zone = sh.lamp_zone[lamp as usize] as usize;
                JUDGED | (sh.class_drop(zone, passes_at) as u8) << 2
            } else {
                0
            };
            self.put(
                sh,
                SensorRec {
                    t: in_range,
                    lamp,
                    pass_in_ms,
                    flags: who | if seen { DETECTED } else { 0 } | judged,
                },
            );
            let next = pos as i64 + dir as i64;
            if next < 0 || next >= n_lamps {
                return;
            }
            let gap = sh.zones[z].gaps_m[pos.min(next as u32) as usize] as f64;
            let t_next_pass = t_pass + (gap / speed * 1000.0) as u64;
            in_range = t_pass + ((gap - SENSOR_RANGE_M).max(0.0) / speed * 1000.0) as u64;
            t_pass = t_next_pass;
            pos = next as u32;
        }
    }
}

/// A region's records in one chunk's time, shared by the runs that read them.
type Chunk = Arc<Vec<SensorRec>>;

/// The shared stream, one per region; see the module docs.
pub(crate) struct Traffic<'s, 'a> {
    sh: &'s Shared<'a>,
    generator: Mutex<Generator>,
    /// By region, then chunk.
    chunks: Vec<Vec<Mutex<Option<Chunk>>>>,
    /// By region and chunk, the runs that have not read it yet.
    readers_left: Vec<Vec<AtomicUsize>>,
    /// Chunks (of any region) every run has read.
    freed: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A run that panicked is reported as such by the caller; its data is still whole.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<'s, 'a> Traffic<'s, 'a> {
    /// The road users of the run of `sh`, each region's to be read by `readers` runs.
    pub fn new(sh: &'s Shared<'a>, regions: &[Region], readers: usize) -> Self {
        let n = (sh.end - sh.start).div_ceil(CHUNK_MS) as usize;
        let r = regions.len().max(1);
        Traffic {
            sh,
            generator: Mutex::new(Generator::new(sh, regions)),
            chunks: (0..r)
                .map(|_| (0..n).map(|_| Mutex::new(None)).collect())
                .collect(),
            readers_left: (0..r)
                .map(|_| (0..n).map(|_| AtomicUsize::new(readers)).collect())
                .collect(),
            freed: AtomicUsize::new(0),
        }
    }

    fn chunk_count(&self) -> usize {
        self.chunks[0].len()
    }

    /// Chunk `k` of region `r` (None past the end), made now if no run has needed it yet.
    fn chunk(&self, r: usize, k: usize) -> Option<Chunk> {
        if k >= self.chunk_count() {
            return None;
        }
        if let Some(c) = lock(&self.chunks[r][k]).as_ref() {
            return Some(c.clone());
        }
        self.make_upto(k);
        lock(&self.chunks[r][k]).clone()
    }

    fn make_upto(&self, k: usize) {
        let mut g = lock(&self.generator);
        while g.made <= k {
            let made = g.made;
            for (r, chunk) in g.next_chunk(self.sh).into_iter().enumerate() {
                *lock(&self.chunks[r][made]) = Some(Arc::new(chunk));
            }
        }
    }

    /// A run has read chunk `k` of region `r`: the last one to do so frees it.
    fn done_with(&self, r: usize, k: usize) {
        if self.readers_left[r][k].fetch_sub(1, Ordering::AcqRel) == 1 {
            *lock(&self.chunks[r][k]) = None;
            self.freed.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Makes chunks ahead of the runs until all are made or `stop` is set: for a spare core.
    pub fn produce(&self, stop: &AtomicBool) {
        let regions = self.chunks.len();
        loop {
            let next = lock(&self.generator).made;
            if next >= self.chunk_count() {
                return;
            }
            while next * regions >= self.freed.load(Ordering::Acquire) + LOOKAHEAD_CHUNKS * regions
            {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                std::thread::park_timeout(Duration::from_millis(2));
            }
            if stop.load(Ordering::Acquire) {
                return;
            }
            self.make_upto(next);
        }
    }

    /// A reader of region `r`'s stream, in time order.
    pub fn reader(&'s self, r: usize) -> Reader<'s, 'a> {
        Reader {
            traffic: self,
            r,
            k: 0,
            chunk: self.chunk(r, 0),
            pos: 0,
        }
    }
}

/// One run's place in its region's stream.
pub(crate) struct Reader<'s, 'a> {
    traffic: &'s Traffic<'s, 'a>,
    r: usize,
    k: usize,
    chunk: Option<Chunk>,
    pos: usize,
}

impl Reader<'_, '_> {
    /// The time of the next record.
    #[inline]
    pub fn peek_t(&mut self) -> Option<u64> {
        // Every event of a run asks; a chunk runs out once in five minutes of virtual time.
        match self.chunk.as_ref().and_then(|c| c.get(self.pos)) {
            Some(r) => Some(r.t),
            None => self.next_chunk_t(),
        }
    }

    /// [`Reader::peek_t`] at the end of a chunk: moves to the next one with a record.
    #[cold]
    #[inline(never)]
    fn next_chunk_t(&mut self) -> Option<u64> {
        loop {
            let chunk = self.chunk.as_ref()?;
            if let Some(r) = chunk.get(self.pos) {
                return Some(r.t);
            }
            self.chunk = None;
            self.traffic.done_with(self.r, self.k);
            self.k += 1;
            self.pos = 0;
            self.chunk = self.traffic.chunk(self.r, self.k);
        }
    }

    /// The record `d` after the next, if it is in the chunk being read (for prefetching).
    pub fn ahead(&self, d: usize) -> Option<&SensorRec> {
        self.chunk.as_ref()?.get(self.pos + d)
    }

    /// The next record (after [`Reader::peek_t`] said there is one).
    pub fn next_rec(&mut self) -> Option<SensorRec> {
        self.peek_t()?;
        let r = self.chunk.as_ref()?.get(self.pos).copied();
        self.pos += 1;
        r
    }
}

fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> u32 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda < 30.0 {
        let l = (-lambda).exp();
        let mut k = 0;
        let mut p = 1.0;
        loop {
            p *= rng.gen::<f64>();
            if p <= l {
                return k;
            }
            k += 1;
        }
    }
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (lambda + lambda.sqrt() * z).round().max(0.0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::faults::FaultScenario;
    use crate::plan::profile::DemandProfile;
    use crate::plan::regions;
    use crate::plan::{LinkConfig, DEFAULT_START};
    use lamplighter_town::Town;

    /// A day of `town` from the default start, with seed `seed`.
    fn one_day<'a>(town: &'a Town, profile: &'a DemandProfile, seed: u64) -> Shared<'a> {
        Shared::new(
            town,
            profile,
            DEFAULT_START.0,
            1,
            seed,
            lamplighter_protocol::local_time::TimeZone::UTC,
            10_000,
            LinkConfig::default(),
            FaultScenario::none(),
            1.0,
        )
    }

    fn read_all(traffic: &Traffic) -> Vec<SensorRec> {
        let mut reader = traffic.reader(0);
        std::iter::from_fn(|| reader.next_rec()).collect()
    }

    #[test]
    fn every_reader_gets_the_same_time_ordered_stream_and_chunks_are_freed() {
        let town = Town::procedural(400, 3, (52.2, 0.12));
        let profile = DemandProfile::builtin();
        let sh = one_day(&town, &profile, 7);
        let whole = regions::split(&town, 1);
        let traffic = Traffic::new(&sh, &whole, 2);
        let first = read_all(&traffic);
        assert!(first.len() > 10_000, "only {} records", first.len());
        assert!(first.windows(2).all(|w| w[0].t <= w[1].t), "out of order");
        assert!(first.iter().all(|r| (sh.start..sh.end).contains(&r.t)));
        let seen = first.iter().filter(|r| r.detected()).count() as f64;
        let share = seen / first.len() as f64;
        assert!((0.93..0.97).contains(&share), "detected share {share}");
        // Nothing is freed while the second run still has to read it.
        assert_eq!(traffic.freed.load(Ordering::Acquire), 0);
        // A producer thread running ahead changes nothing the second reader gets.
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| traffic.produce(&stop));
        });
        assert_eq!(read_all(&traffic), first);
        assert_eq!(traffic.freed.load(Ordering::Acquire), traffic.chunk_count());
        assert!(traffic.chunks[0].iter().all(|c| lock(c).is_none()));
        // A fresh stream from the same seed is the same stream, and split by region it is
        // the same records, each in the stream of its lamp's region.
        assert_eq!(read_all(&Traffic::new(&sh, &whole, 1)), first);
        let parts = regions::split(&town, 3);
        let split = Traffic::new(&sh, &parts, 1);
        let mut merged = Vec::new();
        for (r, region) in parts.iter().enumerate() {
            let mut reader = split.reader(r);
            let mine: Vec<SensorRec> = std::iter::from_fn(|| reader.next_rec()).collect();
            assert!(mine.iter().all(|rec| region.local_of(rec.lamp).is_some()));
            merged.extend(mine);
        }
        merged.sort_by_key(|rec| (rec.t, rec.lamp, rec.pass_in_ms, rec.flags));
        let mut all = first.clone();
        all.sort_by_key(|rec| (rec.t, rec.lamp, rec.pass_in_ms, rec.flags));
        assert_eq!(merged, all);
    }

    #[test]
    fn sorting_a_chunk_by_time_keeps_ties_in_the_order_they_came() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let chunk_start = 1_730_721_600_000;
        let mut scratch = Vec::new();
        for len in [0, 1, 2, 1_000, 50_000] {
            // Few distinct times, so that most records tie with others; `lamp` numbers them
            // in the order they came.
            let recs: Vec<SensorRec> = (0..len)
                .map(|k| SensorRec {
                    t: chunk_start + rng.gen_range(0..CHUNK_MS) / 997 * 997,
                    lamp: k,
                    ..SensorRec::default()
                })
                .collect();
            let mut expected = recs.clone();
            expected.sort_by_key(|r| r.t);
            let mut sorted = recs;
            sort_by_time(&mut sorted, chunk_start, &mut scratch);
            assert_eq!(sorted, expected, "{len} records");
        }
    }

    #[test]
    fn a_trip_reaches_the_lamps_of_its_zone_one_after_another() {
        let town = Town::procedural(200, 5, (52.2, 0.12));
        let profile = DemandProfile::builtin();
        let sh = one_day(&town, &profile, 11);
        let mut g = Generator::new(&sh, &regions::split(&town, 1));
        // One vehicle from the first lamp of the longest zone to its end, at 10 m/s.
        let (z, zone) = town
            .zones
            .iter()
            .enumerate()
            .max_by_key(|(_, z)| z.lamps.len())
            .expect("zones");
        let start = sh.start + 3_600_000;
        g.made = ((start - 2_000 - sh.start) / CHUNK_MS) as usize;
        g.lay_out_trip(&sh, 1, z, 0, 1, 2, 10.0, start - 2_000, start);
        let recs: Vec<SensorRec> = g.pending.iter().flatten().flatten().copied().collect();
        assert_eq!(recs.len(), zone.lamps.len());
        let mut t_pass = start;
        for (k, r) in recs.iter().enumerate() {
            assert_eq!(r.lamp, zone.lamps[k].0);
            assert_eq!(r.who(), RoadUser::Vehicle);
            assert_eq!(r.t + r.pass_in_ms as u64, t_pass, "lamp {k}");
            if k + 1 < recs.len() {
                let gap = sh.zones[z].gaps_m[k] as f64;
                t_pass += (gap / 10.0 * 1000.0) as u64;
            }
        }
    }
}
