//! De-duplication: several gateways hear one frame, and each reports it. The copies are
//! gathered for [`NsConfig::dedup_window_ms`](super::NsConfig::dedup_window_ms) from the
//! first, then the frame is processed once with every gateway that heard it.

use std::collections::{HashMap, VecDeque};

use lamplighter_protocol::UnixMs;

use super::events::RxMeta;

/// How long a processed frame is remembered, so a copy arriving after the window is counted
/// as a late duplicate rather than reported as a replay.
const REMEMBER_MS: u64 = 10_000;

struct Gathering {
    metas: Vec<RxMeta>,
    done: bool,
}

/// Which copy of its frame a report was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Heard {
    /// The first: its window opens.
    First,
    /// Another inside the window.
    Again,
    /// After the window closed, while the frame is remembered.
    Late,
}

#[derive(Default)]
pub(super) struct Dedup {
    gathering: HashMap<Vec<u8>, Gathering>,
    /// (first seen, frame), oldest first: the frames whose window is open.
    open: VecDeque<(UnixMs, Vec<u8>)>,
    /// (first seen, frame) of processed frames still remembered.
    remembered: VecDeque<(UnixMs, Vec<u8>)>,
}

impl Dedup {
    /// A gateway's report of `phy`.
    pub(super) fn gather(&mut self, now: UnixMs, phy: Vec<u8>, meta: RxMeta) -> Heard {
        match self.gathering.get_mut(&phy) {
            Some(g) if g.done => Heard::Late,
            Some(g) => {
                // The same gateway reporting twice counts once.
                if !g.metas.iter().any(|m| m.gateway == meta.gateway) {
                    g.metas.push(meta);
                }
                Heard::Again
            }
            None => {
                self.open.push_back((now, phy.clone()));
                self.gathering.insert(
                    phy,
                    Gathering {
                        metas: vec![meta],
                        done: false,
                    },
                );
                Heard::First
            }
        }
    }

    /// When the oldest open window closes.
    pub(super) fn next_close(&self, window_ms: u64) -> Option<UnixMs> {
        self.open.front().map(|(t, _)| t.plus_ms(window_ms))
    }

    /// The next frame whose window has closed by `now`, with the gateways that heard it;
    /// it is remembered from then on.
    pub(super) fn close_due(
        &mut self,
        now: UnixMs,
        window_ms: u64,
    ) -> Option<(Vec<u8>, Vec<RxMeta>)> {
        while let Some((first, _)) = self.open.front() {
            if now.since(*first) < window_ms {
                break;
            }
            let (first, phy) = self.open.pop_front()?;
            let Some(g) = self.gathering.get_mut(&phy) else {
                continue;
            };
            g.done = true;
            let metas = std::mem::take(&mut g.metas);
            self.remembered.push_back((first, phy.clone()));
            return Some((phy, metas));
        }
        None
    }

    /// Forgets the frames remembered long enough.
    pub(super) fn forget(&mut self, now: UnixMs) {
        while let Some((first, _)) = self.remembered.front() {
            if now.since(*first) < REMEMBER_MS {
                break;
            }
            if let Some((_, phy)) = self.remembered.pop_front() {
                self.gathering.remove(&phy);
            }
        }
    }
}
