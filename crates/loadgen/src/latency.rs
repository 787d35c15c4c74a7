//! Publish → receive latency, recorded by many socket tasks at once.
//!
//! Every benchmark payload carries the time it was published (`"ts"`,
//! microseconds since the Unix epoch, from the machine's clock that the
//! publisher and the client share). A socket task records `now - ts` into
//! one of a few shards (its id picks the shard), each a histogram behind
//! its own lock, so the tasks of two runtime threads rarely meet on one.

use std::{
    sync::{Mutex, PoisonError},
    time::{SystemTime, UNIX_EPOCH},
};

use hdrhistogram::Histogram;

const SHARDS: usize = 16;
/// Latencies above a minute are clamped: the step has failed long before.
const HIGHEST_MICROS: u64 = 60_000_000;

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The value of the first `"ts":<digits>` in a frame, found without
/// parsing the JSON (the client must stay cheaper than the server).
pub fn find_ts(frame: &str) -> Option<u64> {
    let at = frame.find("\"ts\":")? + 5;
    let digits = frame[at..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .fold(None, |acc: Option<u64>, d| {
            Some(acc.unwrap_or(0) * 10 + u64::from(d - b'0'))
        });
    digits
}

pub struct Recorder {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
        }
    }

    /// Records the latency of a frame published at `ts` (µs since the
    /// epoch), received now.
    pub fn record(&self, shard: usize, ts: u64) {
        let micros = now_micros().saturating_sub(ts).clamp(1, HIGHEST_MICROS);
        let mut histogram = self.shards[shard % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        histogram.saturating_record(micros);
    }

    /// Everything recorded since the last call, merged; the shards start
    /// empty again.
    pub fn take(&self) -> Histogram<u64> {
        let mut all = histogram();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            all.add(&*shard).expect("same bounds");
            shard.reset();
        }
        all
    }
}

/// Microseconds from 1 µs to a minute, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_MICROS, 3).expect("valid bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publish_time_is_found_in_a_frame() {
        let frame = r#"{"type":"event","data":{"price":3,"ts":1700000000123456}}"#;
        assert_eq!(find_ts(frame), Some(1_700_000_000_123_456));
        assert_eq!(find_ts(r#"42["event",{"ts":7}]"#), Some(7));
        assert_eq!(find_ts(r#"{"type":"pong"}"#), None);
    }

    #[test]
    fn recorded_latencies_are_merged_and_then_forgotten() {
        let recorder = Recorder::new();
        let ts = now_micros() - 2_000;
        recorder.record(0, ts);
        recorder.record(5, ts);
        let taken = recorder.take();
        assert_eq!(taken.len(), 2);
        assert!(taken.min() >= 2_000);
        assert_eq!(recorder.take().len(), 0);
    }
}
