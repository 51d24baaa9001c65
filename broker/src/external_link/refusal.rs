//! Why a message was not passed on, typed, with the short reason it is counted under.

use lamplighter_protocol::lorawan;
use lamplighter_protocol::{DevAddr, DevEui};

use crate::external;

/// Why a message was not passed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("uplink event: {0}")]
    External(#[from] external::ExternalError),
    #[error("topic {0:?} is not one this link subscribed to")]
    Topic(String),
    #[error("DevEUI {0} is not a node of this tenant")]
    UnknownDevice(DevEui),
    #[error("the event's DevEUI {event} differs from its topic's {topic:?}")]
    TopicMismatch { event: DevEui, topic: String },
    #[error("downlink frame: {0}")]
    Frame(#[from] lorawan::FrameError),
    #[error("downlink frame for {0}, a DevAddr not of the node it was addressed to")]
    WrongDevAddr(DevAddr),
    #[error("downlink frame without FPort")]
    NoPort,
    #[error("FCnt {got} in this session is not after {last}: a replay")]
    Replay { last: u32, got: u32 },
    #[error("the session counter of {0} would pass 2^32")]
    CounterExhausted(DevEui),
}

impl LinkError {
    pub fn kind(&self) -> &'static str {
        match self {
            LinkError::External(e) => e.kind(),
            LinkError::Topic(_) => "topic",
            LinkError::UnknownDevice(_) => "unknown-device",
            LinkError::TopicMismatch { .. } => "topic-mismatch",
            LinkError::Frame(lorawan::FrameError::BadMic) => "bad-mic",
            LinkError::Frame(lorawan::FrameError::Replay { .. }) => "replay",
            LinkError::Frame(_) => "frame",
            LinkError::WrongDevAddr(_) => "wrong-devaddr",
            LinkError::NoPort => "no-port",
            LinkError::Replay { .. } => "replay",
            LinkError::CounterExhausted(_) => "counter-exhausted",
        }
    }
}

/// The reason as the controller's summary spells refusals at an external link
/// (`external-{kind}`), so they sit beside its own rejections by reason.
pub fn summary_reason(kind: &str) -> &'static str {
    match kind {
        "shape" => "external-shape",
        "deveui" => "external-deveui",
        "base64" => "external-base64",
        "no-port" => "external-no-port",
        "too-long" => "external-too-long",
        "topic" => "external-topic",
        "unknown-device" => "external-unknown-device",
        "topic-mismatch" => "external-topic-mismatch",
        "replay" => "external-replay",
        "counter-exhausted" => "external-counter-exhausted",
        _ => "external-other",
    }
}
