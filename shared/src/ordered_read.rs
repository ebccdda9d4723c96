//! Reading one subject of a stream in order from a position, each message
//! once. An async-nats ordered consumer recreates itself after missed
//! heartbeats, a lost server or a deleted consumer, starting after the last
//! message it handed on; but one recreated before it handed on any starts
//! over at the stream's first message, whatever start it was made with. A
//! page read after a NATS server crash then took messages it had already
//! read by direct get a second time, and a resumed live stream replayed its
//! subject from the start. Every ordered read goes through [`OrderedRead`],
//! which hands on only positions past its start and past the last one.

use async_nats::jetstream::{self, consumer, stream};
use futures::{future, Stream, StreamExt};

/// The guard: the lowest position still to be handed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    next: u64,
}

impl Forward {
    pub fn new(start: u64) -> Self {
        Self { next: start }
    }

    /// Whether the message at `position` is new (at or after the start,
    /// after every one handed on so far); if so it is the last one now.
    pub fn admit(&mut self, position: u64) -> bool {
        if position < self.next {
            return false;
        }
        self.next = position.saturating_add(1);
        true
    }
}

/// An ordered consumer of one subject from a stream position, not yet read.
pub struct OrderedRead {
    consumer: consumer::Consumer<consumer::pull::OrderedConfig>,
    start: u64,
}

impl OrderedRead {
    /// Creates the consumer of `subject` from stream position `start`.
    pub async fn open(
        stream: &stream::Stream,
        subject: &str,
        start: u64,
    ) -> Result<Self, jetstream::stream::ConsumerError> {
        let start = start.max(1);
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject.to_string(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await?;
        Ok(Self { consumer, start })
    }

    /// The consumer's name on the server (as first created).
    pub fn name(&self) -> String {
        self.consumer.cached_info().name.clone()
    }

    /// The messages from the start on, in order, each once. A message whose
    /// metadata does not parse is handed on: the caller reports it.
    pub async fn messages(
        self,
    ) -> Result<
        impl Stream<Item = Result<jetstream::Message, consumer::pull::OrderedError>> + Unpin,
        consumer::StreamError,
    > {
        let mut forward = Forward::new(self.start);
        let messages = self.consumer.messages().await?;
        Ok(messages.filter(move |message| {
            let new = match message.as_ref().map(|m| m.info()) {
                Ok(Ok(info)) => forward.admit(info.stream_sequence),
                _ => true,
            };
            future::ready(new)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_before_the_start_or_seen_already_are_dropped() {
        let mut forward = Forward::new(5);
        // A consumer recreated before its first message starts over at 1.
        assert!(!forward.admit(1));
        assert!(!forward.admit(4));
        assert!(forward.admit(5));
        assert!(forward.admit(9), "gaps (other subjects) are fine");
        assert!(!forward.admit(9), "the same message again");
        assert!(!forward.admit(7), "an earlier one again");
        assert!(forward.admit(10));
    }
}
