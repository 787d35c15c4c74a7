//! Two ways to load a server with requests, whatever the protocol
//! ([`crate::http`], [`crate::grpc`] supply the call):
//!
//! - **open loop** ([`open_loop`]): requests are due at a constant arrival
//!   rate, on a schedule fixed before the run (request *i* at
//!   `start + i / rate`), whether or not the earlier ones have been
//!   answered. Each latency runs from the request's *intended* send time,
//!   not from when it was actually sent: a server that stalls for a second
//!   is charged the whole second by every request that was due in it
//!   (no coordinated omission). At most `max_in_flight` requests are out at
//!   once; a request due while all slots are taken waits for one, and its
//!   wait counts in its latency.
//!
//! - **closed loop** ([`closed_loop`]): `concurrency` callers, each sending
//!   its next request when the last one was answered, for a duration: the
//!   highest throughput the server sustains with that many requests out.
//!
//! Both return an [`Outcome`]: latencies in an HDR histogram (µs, three
//! significant digits), the answers counted by code (`200`, `OK`,
//! `Unavailable`, …) and the failures that never got an answer counted by
//! kind.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::latency;

/// What one call came back with: an answer with its code, or no answer.
pub enum Answer {
    /// The server answered; `ok` when the code is a success (2xx, `OK`).
    Code { code: String, ok: bool },
    /// No answer: a refused or broken connection, a timeout, a decoding
    /// error; the kind is what is counted.
    Failed(String),
}

/// What a run of calls did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// `open 500/s` or `closed 64`.
    pub mode: String,
    /// The measured window (the schedule's length, or the closed loop's).
    pub seconds: f64,
    /// Requests started.
    pub sent: u64,
    /// Requests answered with a success code.
    pub ok: u64,
    /// Answers by code, successes included.
    pub codes: BTreeMap<String, u64>,
    /// Calls without an answer, by kind (`unfinished`: still out when the
    /// run gave up waiting).
    pub failures: BTreeMap<String, u64>,
    /// Successful answers per second of the window.
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Outcome {
    /// Everything that was not a success: other codes and failures.
    pub fn errors(&self) -> u64 {
        self.sent.saturating_sub(self.ok)
    }

    fn new(mode: String, seconds: f64, tally: Tally, histogram: &Histogram<u64>) -> Self {
        let ms = |q: f64| {
            if histogram.is_empty() {
                f64::NAN
            } else {
                histogram.value_at_quantile(q) as f64 / 1000.0
            }
        };
        Self {
            mode,
            seconds,
            sent: tally.sent,
            ok: tally.ok,
            per_sec: tally.ok as f64 / seconds.max(f64::MIN_POSITIVE),
            codes: tally.codes,
            failures: tally.failures,
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            max_ms: if histogram.is_empty() {
                f64::NAN
            } else {
                histogram.max() as f64 / 1000.0
            },
        }
    }
}

/// Counts shared by the callers. A `std` mutex: each caller holds it for
/// two map updates, never across an `.await`.
#[derive(Default)]
struct Tally {
    sent: u64,
    ok: u64,
    codes: BTreeMap<String, u64>,
    failures: BTreeMap<String, u64>,
}

impl Tally {
    fn count(&mut self, answer: Answer) {
        match answer {
            Answer::Code { code, ok } => {
                self.ok += u64::from(ok);
                *self.codes.entry(code).or_default() += 1;
            }
            Answer::Failed(kind) => *self.failures.entry(kind).or_default() += 1,
        }
    }
}

/// How long an open-loop run waits, after its last request was due, for
/// the answers still out; what has not come back then is `unfinished`.
const DRAIN: Duration = Duration::from_secs(10);

/// Sends `call()` at `rate` per second for `duration` (see the module
/// documentation), with at most `max_in_flight` out at once.
pub async fn open_loop<F, Fut>(
    call: F,
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
) -> Outcome
where
    F: Fn() -> Fut,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let recorder = Arc::new(latency::Recorder::new());
    let tally = Arc::new(Mutex::new(Tally::default()));
    // The slots of requests out at once; a task holds one until its answer.
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let start = Instant::now();
    let start_micros = latency::now_micros();
    for i in 0..total {
        let due = interval * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until((start + due).into()).await;
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        // The intended send time, on the clock the recorder reads.
        let intended = start_micros + u64::try_from(due.as_micros()).unwrap_or(u64::MAX);
        let (recorder, tally) = (Arc::clone(&recorder), Arc::clone(&tally));
        let answer = call();
        tally.lock().unwrap_or_else(PoisonError::into_inner).sent += 1;
        tokio::spawn(async move {
            let answer = answer.await;
            recorder.record(i as usize, intended);
            tally
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .count(answer);
            // Last: the drain below takes every slot back as the sign that
            // every answer is counted.
            drop(slot);
        });
    }
    // Every slot back means every answer is in.
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(DRAIN, slots.acquire_many(all)).await;
    let mut tally = std::mem::take(&mut *tally.lock().unwrap_or_else(PoisonError::into_inner));
    if drained.is_err() {
        let answered = tally.codes.values().sum::<u64>() + tally.failures.values().sum::<u64>();
        let out = tally.sent.saturating_sub(answered);
        *tally.failures.entry("unfinished".to_owned()).or_default() += out;
    }
    Outcome::new(
        format!("open {rate:.0}/s"),
        duration.as_secs_f64(),
        tally,
        &recorder.take(),
    )
}

/// Runs `concurrency` callers, each calling `call()` again as soon as the
/// last one was answered, for `duration`; latency from send to answer.
pub async fn closed_loop<F, Fut>(call: F, concurrency: usize, duration: Duration) -> Outcome
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let recorder = Arc::new(latency::Recorder::new());
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let end = start + duration;
    let callers: Vec<_> = (0..concurrency)
        .map(|caller| {
            let (call, recorder, tally) = (call.clone(), Arc::clone(&recorder), Arc::clone(&tally));
            tokio::spawn(async move {
                while Instant::now() < end {
                    let sent = latency::now_micros();
                    tally.lock().unwrap_or_else(PoisonError::into_inner).sent += 1;
                    let answer = call().await;
                    recorder.record(caller, sent);
                    tally
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .count(answer);
                }
            })
        })
        .collect();
    for caller in callers {
        let _ = caller.await;
    }
    // The window ends with the last answer: the calls that started before
    // `end` are counted, so is the time they took.
    let seconds = start.elapsed().as_secs_f64();
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(PoisonError::into_inner));
    Outcome::new(
        format!("closed {concurrency}"),
        seconds,
        tally,
        &recorder.take(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Answer {
        Answer::Code {
            code: "200".to_owned(),
            ok: true,
        }
    }

    #[tokio::test]
    async fn an_open_loop_sends_on_schedule_and_charges_a_stall_to_every_request_due_in_it() {
        // One slot: while the first (slow) call holds it, the requests due
        // meanwhile wait, and their latency runs from when they were due.
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let outcome = open_loop(
            move || {
                // Relaxed: a count read after every task has finished.
                let n = counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    if n == 0 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    ok()
                }
            },
            100.0,
            Duration::from_millis(500),
            1,
        )
        .await;
        assert_eq!(outcome.sent, 50);
        assert_eq!(outcome.ok, 50);
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 50);
        // The request due at 10 ms waited until 200 ms: ~190 ms late.
        // Measured from its actual send it would have been ~0.
        assert!(outcome.p90_ms >= 20.0, "p90 {} ms", outcome.p90_ms);
        assert!(outcome.max_ms >= 190.0, "max {} ms", outcome.max_ms);
    }

    #[tokio::test]
    async fn a_closed_loop_counts_codes_and_failures_apart() {
        let turn = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let outcome = closed_loop(
            move || {
                // Relaxed: only the counter's own sequence matters.
                let n = turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    match n % 3 {
                        0 => ok(),
                        1 => Answer::Code {
                            code: "503".to_owned(),
                            ok: false,
                        },
                        _ => Answer::Failed("connect".to_owned()),
                    }
                }
            },
            2,
            Duration::from_millis(200),
        )
        .await;
        assert!(outcome.sent >= 6);
        let answered = outcome.codes.values().sum::<u64>();
        let failed = outcome.failures.values().sum::<u64>();
        assert_eq!(answered + failed, outcome.sent);
        assert_eq!(outcome.errors(), outcome.sent - outcome.ok);
        assert!(outcome.codes.contains_key("503") && outcome.failures.contains_key("connect"));
    }
}
