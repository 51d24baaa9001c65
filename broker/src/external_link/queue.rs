//! The commands waiting for a tenant's network: only the latest per lamp and command kind
//! is kept (a later level makes an earlier one moot), and once published it expires on the
//! network's side, so an outage never plays old levels back.

use std::collections::BTreeMap;

use lamplighter_protocol::payload::Command;
use lamplighter_protocol::DevEui;

use crate::external;

/// Tunables of the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdapterOptions {
    /// ChirpStack's `expiresAt`: this long after the command is published.
    pub command_expiry_ms: u64,
}

/// A command outlives the controller's 5-minute refresh by a little: the next refresh
/// replaces it anyway, and a network never plays back a level older than this.
pub const DEFAULT_COMMAND_EXPIRY_MS: u64 = 6 * 60 * 1000;

impl Default for AdapterOptions {
    fn default() -> Self {
        AdapterOptions {
            command_expiry_ms: DEFAULT_COMMAND_EXPIRY_MS,
        }
    }
}

/// The latest command per device and command kind, not yet published.
#[derive(Debug, Default)]
pub(super) struct CommandQueue {
    pending: BTreeMap<DevEui, BTreeMap<u8, external::Downlink>>,
}

/// Which commands supersede each other: the same kind for the same lamp.
fn command_kind(payload: &[u8]) -> u8 {
    match Command::decode(payload) {
        Ok(Command::SetLevel { .. }) => 1,
        Ok(Command::FailSafeProfile(_)) => 2,
        Err(_) => 0,
    }
}

impl CommandQueue {
    /// Keeps `down` as the device's latest command of its kind; true if it replaced one
    /// that had not been published.
    pub(super) fn keep(&mut self, dev_eui: DevEui, down: external::Downlink) -> bool {
        let kind = command_kind(&down.payload);
        self.pending
            .entry(dev_eui)
            .or_default()
            .insert(kind, down)
            .is_some()
    }

    /// The devices with commands waiting, in DevEUI order.
    pub(super) fn devices(&self) -> impl Iterator<Item = DevEui> + '_ {
        self.pending.keys().copied()
    }

    /// The device's first waiting command by kind (ChirpStack takes one per message).
    pub(super) fn take_one(&mut self, dev_eui: DevEui) -> Option<external::Downlink> {
        let kinds = self.pending.get_mut(&dev_eui)?;
        let (_, down) = kinds.pop_first()?;
        if kinds.is_empty() {
            self.pending.remove(&dev_eui);
        }
        Some(down)
    }

    /// Every waiting command of the device, by kind (The Things Stack replaces its queue
    /// with all of them at once).
    pub(super) fn take_all(&mut self, dev_eui: DevEui) -> Vec<external::Downlink> {
        self.pending
            .remove(&dev_eui)
            .map(|kinds| kinds.into_values().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(level_pct: u8) -> external::Downlink {
        external::Downlink {
            fport: 11,
            payload: Command::SetLevel {
                level_pct,
                ramp_ms: 0,
                hold_s: 0,
            }
            .encode()
            .unwrap(),
        }
    }

    #[test]
    fn a_later_command_of_a_kind_replaces_the_waiting_one() {
        let (a, b) = (DevEui(1), DevEui(2));
        let mut q = CommandQueue::default();
        assert!(!q.keep(b, level(10)));
        assert!(!q.keep(a, level(20)));
        assert!(q.keep(b, level(30)));
        // Another kind waits beside it.
        assert!(!q.keep(
            b,
            external::Downlink {
                fport: 12,
                payload: vec![0xff]
            }
        ));
        assert_eq!(q.devices().collect::<Vec<_>>(), vec![a, b]);
        assert_eq!(q.take_one(a), Some(level(20)));
        assert_eq!(q.devices().collect::<Vec<_>>(), vec![b]);
        let all = q.take_all(b);
        assert_eq!(all.len(), 2);
        assert!(all.contains(&level(30)));
        assert_eq!(q.devices().count(), 0);
        assert_eq!(q.take_one(b), None);
    }
}
