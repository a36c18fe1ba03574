//! The state owner: the one thread that moves the cursor and writes the state file. It takes
//! steps from a bounded queue in arrival order, applies a whole batch of them, commits the
//! batch's final cursor with one fdatasync (group commit), publishes the new durable index,
//! and only then hands each step its outcome. Workers never wait for the disk.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::thread;
use std::time::Instant;

use crossbeam_channel::Receiver;

use crate::cursor::{Bound, Cursor, Step};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::state_file::Storage;

/// What the rest of the process may read about the state, without locks.
#[derive(Debug)]
pub struct Published {
    /// The cursor index as last made durable. `/current` reads this, so it never shows a
    /// state that a crash could still take back.
    index: AtomicU8,
    /// False once a write failed: no further step will be acknowledged.
    healthy: AtomicBool,
}

impl Published {
    pub fn new(cursor: Cursor) -> Published {
        Published {
            index: AtomicU8::new(cursor.index()),
            healthy: AtomicBool::new(true),
        }
    }

    pub fn index(&self) -> u8 {
        self.index.load(Ordering::Acquire)
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
}

/// A step to make, and whatever the caller needs to answer it later.
pub struct StepRequest<T> {
    pub step: Step,
    pub ticket: T,
}

/// How a step ended. Every outcome is final when delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The cursor moved to this index, and that index is durable.
    Stepped(u8),
    /// The step would leave the table; the cursor did not move.
    Bound(Bound),
    /// The state file could not be written: the step is not acknowledged. A step of the batch
    /// whose commit failed may still have reached the disk (a failed fdatasync does not say
    /// what was written), so its outcome is unknown; later steps were not made.
    Unavailable,
}

/// Runs the state owner until every sender of `requests` is gone. `deliver` receives every
/// ticket exactly once, in arrival order. `on_failure` is called once, on the first failed
/// commit; after it every step is answered `Unavailable` and nothing more is written, because
/// after a failed fsync the kernel may have dropped the dirty data and a retry could report
/// success for a write that never reached the disk.
pub fn run<S: Storage, T>(
    mut storage: S,
    published: &Published,
    metrics: &Metrics,
    requests: Receiver<StepRequest<T>>,
    batch_ops_max: usize,
    mut deliver: impl FnMut(T, Outcome),
    mut on_failure: impl FnMut(&Error),
) {
    assert!(batch_ops_max >= 1, "a batch holds at least one step");
    let mut cursor = Cursor::at(published.index().into()).expect("published index is valid");
    let mut batch: Vec<StepRequest<T>> = Vec::with_capacity(batch_ops_max);
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(batch_ops_max);
    while let Ok(first) = requests.recv() {
        batch.push(first);
        take_queued(&requests, &mut batch, batch_ops_max);
        if batch.len() < batch_ops_max {
            // On a busy core, the threads that parse requests are often runnable but not yet
            // run when the state owner wakes: it would commit the few steps already queued, and
            // the steps those threads are about to send would each wait a whole fdatasync for
            // the next batch. Yielding once lets them send first. On one core with 100
            // connections this took batches from 8 steps to about 80 and durable steps/s up
            // by a third (docs/BENCHMARKS.md). With nothing else runnable the yield returns at
            // once, so it costs an idle server one system call per batch.
            thread::yield_now();
            take_queued(&requests, &mut batch, batch_ops_max);
        }

        let mut next = cursor;
        let mut stepped = 0u64;
        for request in &batch {
            outcomes.push(if !published.healthy() {
                Outcome::Unavailable
            } else {
                match next.step(request.step) {
                    Ok(index) => {
                        stepped += 1;
                        Outcome::Stepped(index)
                    }
                    Err(bound) => Outcome::Bound(bound),
                }
            });
        }

        // Commit whenever any step succeeded, even if the batch ends where it began: each
        // acknowledged step is then covered by an fdatasync, exactly as promised.
        if stepped > 0 {
            let started = Instant::now();
            metrics.commit_began();
            let committed = storage.commit(next);
            metrics.commit_ended();
            match committed {
                Ok(()) => {
                    cursor = next;
                    published.index.store(cursor.index(), Ordering::Release);
                    metrics
                        .commit_latency
                        .observe(started.elapsed().as_secs_f64());
                    metrics.commit_steps.observe(stepped as f64);
                }
                Err(err) => {
                    published.healthy.store(false, Ordering::Release);
                    metrics.state_write_errors.fetch_add(1, Ordering::Relaxed);
                    on_failure(&err);
                    // Bounds in this batch were judged against steps that never happened.
                    outcomes.fill(Outcome::Unavailable);
                }
            }
        }

        for (request, outcome) in batch.drain(..).zip(outcomes.drain(..)) {
            deliver(request.ticket, outcome);
        }
    }
}

/// Moves steps already queued into `batch`, until it holds `batch_ops_max`.
fn take_queued<T>(
    requests: &Receiver<StepRequest<T>>,
    batch: &mut Vec<StepRequest<T>>,
    batch_ops_max: usize,
) {
    while batch.len() < batch_ops_max {
        match requests.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Operation;
    use crate::fib;
    use crate::sim_disk::{Dice, SimDisk};
    use crate::slot;
    use crate::state_file::StateFile;
    use crossbeam_channel::bounded;
    use std::io;

    /// The error a fault-injecting storage returns: an fdatasync that failed.
    fn injected_failure() -> Error {
        Error::io(
            Operation::Sync,
            std::path::Path::new("fake.state"),
            io::Error::other("injected fsync failure"),
        )
    }

    /// In-memory storage that records commits and can be told to fail.
    struct FakeStorage<'a> {
        commits: &'a mut Vec<u8>,
        fail_after: usize,
    }

    impl Storage for FakeStorage<'_> {
        fn commit(&mut self, cursor: Cursor) -> Result<(), Error> {
            if self.commits.len() == self.fail_after {
                return Err(injected_failure());
            }
            self.commits.push(cursor.index());
            Ok(())
        }
    }

    fn run_steps(
        steps: &[Step],
        start: u8,
        batch_ops_max: usize,
        fail_after: usize,
    ) -> (Vec<(usize, Outcome)>, Vec<u8>, u8, bool, usize) {
        let (tx, rx) = bounded(steps.len().max(1));
        for (ticket, &step) in steps.iter().enumerate() {
            tx.send(StepRequest { step, ticket }).unwrap();
        }
        drop(tx);
        let published = Published::new(Cursor::at(start.into()).unwrap());
        let mut commits = Vec::new();
        let mut delivered = Vec::new();
        let mut failures = 0;
        let metrics = Metrics::new();
        run(
            FakeStorage {
                commits: &mut commits,
                fail_after,
            },
            &published,
            &metrics,
            rx,
            batch_ops_max,
            |ticket, outcome| delivered.push((ticket, outcome)),
            |_| failures += 1,
        );
        (
            delivered,
            commits,
            published.index(),
            published.healthy(),
            failures,
        )
    }

    #[test]
    fn one_commit_covers_a_whole_batch() {
        let steps = [Step::Next, Step::Next, Step::Next, Step::Previous];
        let (delivered, commits, index, healthy, _) = run_steps(&steps, 0, 64, usize::MAX);
        let outcomes: Vec<_> = delivered.iter().map(|d| d.1).collect();
        assert_eq!(
            outcomes,
            [1, 2, 3, 2].map(Outcome::Stepped),
            "outcomes in arrival order"
        );
        assert_eq!(
            delivered.iter().map(|d| d.0).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(commits, [2], "one fsync for the batch");
        assert_eq!(steps_per_commit(&steps, 64), (1, 4.0));
        assert_eq!((index, healthy), (2, true));
    }

    /// Commits and steps recorded in the metrics for a run from index 0.
    fn steps_per_commit(steps: &[Step], batch_ops_max: usize) -> (u64, f64) {
        let (tx, rx) = bounded(steps.len());
        for &step in steps {
            tx.send(StepRequest { step, ticket: () }).unwrap();
        }
        drop(tx);
        let metrics = Metrics::new();
        let mut commits = Vec::new();
        let storage = FakeStorage {
            commits: &mut commits,
            fail_after: usize::MAX,
        };
        let published = Published::new(Cursor::START);
        run(
            storage,
            &published,
            &metrics,
            rx,
            batch_ops_max,
            |_, _| {},
            |_| {},
        );
        (metrics.commit_steps.count(), metrics.commit_steps.sum())
    }

    /// Storage that records whether the metrics showed a commit in flight while it ran.
    struct Observing<'a> {
        metrics: &'a Metrics,
        seen: &'a mut Vec<bool>,
        fail: bool,
    }

    impl Storage for Observing<'_> {
        fn commit(&mut self, _: Cursor) -> Result<(), Error> {
            self.seen.push(self.metrics.commit_in_flight().is_some());
            if self.fail {
                return Err(injected_failure());
            }
            Ok(())
        }
    }

    #[test]
    fn a_commit_shows_as_in_flight_while_it_runs_and_not_after_it_returns() {
        for fail in [false, true] {
            let (tx, rx) = bounded(2);
            tx.send(StepRequest {
                step: Step::Next,
                ticket: (),
            })
            .unwrap();
            drop(tx);
            let metrics = Metrics::new();
            let mut seen = Vec::new();
            let storage = Observing {
                metrics: &metrics,
                seen: &mut seen,
                fail,
            };
            let published = Published::new(Cursor::START);
            run(storage, &published, &metrics, rx, 8, |_, _| {}, |_| {});
            assert_eq!(seen, [true], "fail: {fail}");
            assert_eq!(metrics.commit_in_flight(), None, "fail: {fail}");
        }
    }

    /// Storage that records what `/current` would read while the commit runs.
    struct Peeking<'a> {
        published: &'a Published,
        seen: &'a std::cell::RefCell<Vec<u8>>,
    }

    impl Storage for Peeking<'_> {
        fn commit(&mut self, _: Cursor) -> Result<(), Error> {
            self.seen.borrow_mut().push(self.published.index());
            Ok(())
        }
    }

    #[test]
    fn the_published_index_moves_only_after_the_commit_returns() {
        let (tx, rx) = bounded(4);
        for _ in 0..3 {
            tx.send(StepRequest {
                step: Step::Next,
                ticket: (),
            })
            .unwrap();
        }
        drop(tx);
        let published = Published::new(Cursor::START);
        let seen = std::cell::RefCell::new(Vec::new());
        let storage = Peeking {
            published: &published,
            seen: &seen,
        };
        run(
            storage,
            &published,
            &Metrics::new(),
            rx,
            1,
            |_, _| {},
            |_| {},
        );
        assert_eq!(
            *seen.borrow(),
            [0, 1, 2],
            "during each commit, the index before it"
        );
        assert_eq!(published.index(), 3);
    }

    #[test]
    fn a_batch_that_ends_where_it_began_is_still_committed() {
        let (delivered, commits, ..) = run_steps(&[Step::Next, Step::Previous], 0, 8, usize::MAX);
        assert_eq!(
            delivered.iter().map(|d| d.1).collect::<Vec<_>>(),
            [Outcome::Stepped(1), Outcome::Stepped(0)]
        );
        assert_eq!(
            commits,
            [0],
            "each acknowledged step is covered by an fdatasync"
        );
    }

    #[test]
    fn batch_size_one_commits_every_step() {
        let steps = [Step::Next, Step::Next, Step::Previous];
        let (_, commits, ..) = run_steps(&steps, 0, 1, usize::MAX);
        assert_eq!(commits, [1, 2, 1]);
        assert_eq!(steps_per_commit(&steps, 1), (3, 3.0));
    }

    #[test]
    fn bounds_do_not_commit_or_move() {
        let (delivered, commits, index, ..) = run_steps(&[Step::Previous], 0, 8, usize::MAX);
        assert_eq!(delivered, [(0, Outcome::Bound(Bound::AtStart))]);
        assert!(commits.is_empty());
        assert_eq!(index, 0);
        let end = fib::INDEX_MAX;
        let (delivered, _, index, ..) =
            run_steps(&[Step::Next, Step::Previous], end, 8, usize::MAX);
        assert_eq!(delivered[0].1, Outcome::Bound(Bound::AtEnd));
        assert_eq!(delivered[1].1, Outcome::Stepped(end - 1));
        assert_eq!(index, end - 1);
    }

    #[test]
    fn a_power_cut_at_any_point_keeps_every_acknowledged_step() {
        const STEPS: usize = 40;
        let mut dice = Dice(0x9E37_79B9_7F4A_7C15);
        for round in 0..500 {
            let disk = SimDisk::new(&slot::initial_file());
            // Each commit is a write and an fdatasync; some rounds keep the power on.
            disk.cut_power_after(dice.below(2 * STEPS + 4));
            let batch_ops_max = 1 + dice.below(8);
            let (tx, rx) = bounded(STEPS);
            for ticket in 0..STEPS {
                tx.send(StepRequest {
                    step: Step::Next,
                    ticket,
                })
                .unwrap();
            }
            drop(tx);
            // Every step is a `Next` from F(0), so a step's index counts the steps before it,
            // and a state holds a step exactly when its index is at least the step's.
            let mut acknowledged = 0;
            run(
                StateFile::over(disk.clone(), 1),
                &Published::new(Cursor::START),
                &Metrics::new(),
                rx,
                batch_ops_max,
                |_, outcome| {
                    if let Outcome::Stepped(index) = outcome {
                        let on_platter = slot::recover(&disk.platter()).unwrap().slot;
                        assert!(
                            on_platter.cursor.index() >= index,
                            "round {round}: step to {index} acknowledged before it was durable"
                        );
                        acknowledged = index;
                    }
                },
                |_| {},
            );
            disk.assert_power_cut_keeps(&mut dice, acknowledged, round);
        }
    }

    #[test]
    fn a_failed_commit_answers_its_whole_batch_unavailable_bounds_included() {
        // One batch: a bound (judged at F(0)) and two steps, whose commit fails.
        let steps = [Step::Previous, Step::Next, Step::Next];
        let (delivered, commits, index, healthy, failures) = run_steps(&steps, 0, 8, 0);
        assert_eq!(
            delivered,
            [0, 1, 2].map(|ticket| (ticket, Outcome::Unavailable)),
            "no outcome of a batch that never reached the disk is claimed"
        );
        assert!(commits.is_empty());
        assert_eq!((index, healthy, failures), (0, false, 1));
    }

    #[test]
    fn a_failed_commit_answers_unavailable_and_stops_writing() {
        let steps = [Step::Next, Step::Next, Step::Next];
        let (delivered, commits, index, healthy, failures) = run_steps(&steps, 0, 1, 1);
        assert_eq!(delivered[0].1, Outcome::Stepped(1));
        assert_eq!(delivered[1].1, Outcome::Unavailable);
        assert_eq!(delivered[2].1, Outcome::Unavailable);
        assert_eq!(commits, [1], "no write after the failure");
        assert_eq!(
            index, 1,
            "the published index stays at the last durable one"
        );
        assert!(!healthy);
        assert_eq!(failures, 1);
    }
}
