//! The queue between the requests and the model, and the one inference worker that drains it
//! (TEI's `core/src/queue.rs` and `infer.rs` play this part there). Knows nothing of HTTP.
//!
//! A request submits its tokenized texts as one job; every text is an entry of one bounded
//! FIFO queue. The worker takes entries from the front until the next one would pass the
//! token budget (real tokens: batches are packed, never padded), groups them by kind (the
//! heads and settings a pass computes) and runs each group as one packed batch. A job's texts
//! may span batches; its reply goes out when its last text is done. Because a text's outputs
//! do not depend on what shares its batch, the answer is the same bits as a lone call.
//!
//! A job whose [`Ticket`] is dropped (its client went away) leaves the queue at once, so its
//! texts are never computed.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::tokenize::Encoded;

/// What the worker runs: one packed batch of texts of one kind, giving one output per text in
/// order.
pub(crate) type Run<K, O> = dyn Fn(&K, &[Encoded]) -> Result<Vec<O>> + Send + Sync;

/// The queue and its worker thread.
pub(crate) struct Batcher<K, O> {
    shared: Arc<Shared<K, O>>,
    worker: Option<JoinHandle<()>>,
}

/// A finished job: its outputs in input order, and where its time went.
pub(crate) struct Done<O> {
    pub outputs: Vec<O>,
    /// From submission to the start of the first batch holding one of its texts.
    pub queue: Duration,
    /// From that start to the end of the last such batch.
    pub inference: Duration,
}

/// The queue is full: the caller answers "overloaded".
#[derive(Debug)]
pub(crate) struct Full;

/// Counters of the worker's activity, for `/metrics`.
#[derive(Default)]
pub(crate) struct Stats {
    pub batches: AtomicU64,
    pub texts: AtomicU64,
    pub tokens: AtomicU64,
    /// Texts that left the queue uncomputed because their client went away.
    pub cancelled: AtomicU64,
}

struct Shared<K, O> {
    state: Mutex<State<K, O>>,
    wake: Condvar,
    /// The most real tokens one batch holds (a longer text runs alone).
    max_batch_tokens: usize,
    /// The most texts the queue holds.
    capacity: usize,
    stats: Stats,
}

struct State<K, O> {
    queue: VecDeque<Entry<K, O>>,
    closed: bool,
    next_job: u64,
}

struct Entry<K, O> {
    job: Arc<Job<O>>,
    index: usize,
    kind: K,
    input: Encoded,
}

struct Job<O> {
    id: u64,
    submitted: Instant,
    progress: Mutex<Progress<O>>,
}

struct Progress<O> {
    outputs: Vec<Option<O>>,
    remaining: usize,
    started: Option<Instant>,
    reply: Option<oneshot::Sender<Result<Done<O>>>>,
}

/// A submitted job's pending answer. Dropping it withdraws the job's queued texts.
pub(crate) struct Ticket<K, O> {
    reply: Option<oneshot::Receiver<Result<Done<O>>>>,
    /// Set once the reply has come: then no entry of the job is left to withdraw.
    answered: bool,
    job: u64,
    shared: Arc<Shared<K, O>>,
}

impl<K, O> Batcher<K, O>
where
    K: PartialEq + Clone + Send + 'static,
    O: Send + 'static,
{
    /// Starts the worker thread, which runs batches with `run`.
    pub fn start(max_batch_tokens: usize, capacity: usize, run: Box<Run<K, O>>) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
                next_job: 0,
            }),
            wake: Condvar::new(),
            max_batch_tokens: max_batch_tokens.max(1),
            capacity,
            stats: Stats::default(),
        });
        let worker = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("bge-inference".into())
                .spawn(move || work(&shared, &*run))
                .expect("spawning the inference thread")
        };
        Batcher {
            shared,
            worker: Some(worker),
        }
    }

    /// Queues `inputs` (one job, all of `kind`); [`Full`] if the queue cannot take them all.
    pub fn submit(&self, kind: K, inputs: Vec<Encoded>) -> Result<Ticket<K, O>, Full> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.shared.lock();
        if state.queue.len() + inputs.len() > self.shared.capacity {
            return Err(Full);
        }
        let id = state.next_job;
        state.next_job += 1;
        let job = Arc::new(Job {
            id,
            submitted: Instant::now(),
            progress: Mutex::new(Progress {
                outputs: inputs.iter().map(|_| None).collect(),
                remaining: inputs.len(),
                started: None,
                reply: Some(tx),
            }),
        });
        if inputs.is_empty() {
            job.finish_if_done(&mut job.lock());
        }
        for (index, input) in inputs.into_iter().enumerate() {
            state.queue.push_back(Entry {
                job: Arc::clone(&job),
                index,
                kind: kind.clone(),
                input,
            });
        }
        drop(state);
        self.shared.wake.notify_one();
        Ok(Ticket {
            reply: Some(rx),
            answered: false,
            job: id,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Texts waiting in the queue.
    pub fn queued(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Whether the worker thread is alive (it stops only when the batcher is dropped).
    pub fn is_running(&self) -> bool {
        self.worker.as_ref().is_some_and(|w| !w.is_finished())
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }
}

impl<K, O> Drop for Batcher<K, O> {
    /// Lets the worker finish what is queued, then stops it.
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl<K, O> Ticket<K, O> {
    /// The job's outputs, once its last text is done; the error of the batch that failed it.
    pub async fn wait(mut self) -> Result<Done<O>> {
        let Some(reply) = self.reply.take() else {
            return Err(Error::Server("a ticket is waited on once".into()));
        };
        let answer = reply.await;
        // Answered (or failed, and withdrawn by the worker): nothing of the job is queued.
        self.answered = true;
        answer.unwrap_or_else(|_| Err(Error::Server("the inference worker stopped".into())))
    }
}

impl<K, O> Drop for Ticket<K, O> {
    /// Withdraws whatever of the job is still queued (nothing once it has been answered).
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let mut state = self.shared.lock();
        let before = state.queue.len();
        state.queue.retain(|e| e.job.id != self.job);
        let withdrawn = before - state.queue.len();
        self.shared
            .stats
            .cancelled
            .fetch_add(withdrawn as u64, Ordering::Relaxed);
    }
}

impl<K, O> Shared<K, O> {
    /// The queue's lock; a panic elsewhere cannot leave the queue itself inconsistent, so a
    /// poisoned lock is taken over.
    fn lock(&self) -> MutexGuard<'_, State<K, O>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for entries and takes the front ones up to the token budget (at least one);
    /// `None` once closed and empty.
    fn next_batch(&self) -> Option<Vec<Entry<K, O>>> {
        let mut state = self.lock();
        while state.queue.is_empty() && !state.closed {
            state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        let mut tokens = 0;
        let mut batch = Vec::new();
        while let Some(next) = state.queue.front() {
            let n = next.input.len();
            if !batch.is_empty() && tokens + n > self.max_batch_tokens {
                break;
            }
            tokens += n;
            batch.extend(state.queue.pop_front());
        }
        (!batch.is_empty()).then_some(batch)
    }

    /// Drops every queued entry of job `id` (after its failure).
    fn withdraw(&self, id: u64) {
        self.lock().queue.retain(|e| e.job.id != id);
    }
}

impl<O> Job<O> {
    fn lock(&self) -> MutexGuard<'_, Progress<O>> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends the outputs once the last one is in.
    fn finish_if_done(&self, progress: &mut Progress<O>) {
        if progress.remaining > 0 {
            return;
        }
        let Some(reply) = progress.reply.take() else {
            return;
        };
        let started = progress.started.unwrap_or(self.submitted);
        let outputs = progress.outputs.iter_mut().filter_map(Option::take);
        let _ = reply.send(Ok(Done {
            outputs: outputs.collect(),
            queue: started - self.submitted,
            inference: started.elapsed(),
        }));
    }
}

/// The worker: batches until the batcher is dropped and the queue is empty.
fn work<K: PartialEq + Clone, O>(shared: &Shared<K, O>, run: &Run<K, O>) {
    while let Some(batch) = shared.next_batch() {
        // One pass per kind, in order of first appearance.
        let mut groups: Vec<(K, Vec<Entry<K, O>>)> = Vec::new();
        for entry in batch {
            match groups.iter_mut().find(|(k, _)| *k == entry.kind) {
                Some((_, entries)) => entries.push(entry),
                None => groups.push((entry.kind.clone(), vec![entry])),
            }
        }
        for (kind, entries) in groups {
            run_group(shared, run, &kind, entries);
        }
    }
}

fn run_group<K, O>(shared: &Shared<K, O>, run: &Run<K, O>, kind: &K, entries: Vec<Entry<K, O>>) {
    let start = Instant::now();
    let (meta, inputs): (Vec<_>, Vec<Encoded>) = entries
        .into_iter()
        .map(|e| ((e.job, e.index), e.input))
        .unzip();
    for (job, _) in &meta {
        job.lock().started.get_or_insert(start);
    }
    let tokens: usize = inputs.iter().map(Encoded::len).sum();
    let result = catch_unwind(AssertUnwindSafe(|| run(kind, &inputs)))
        .unwrap_or_else(|_| Err(Error::Server("the model panicked on this batch".into())))
        .and_then(|outputs| match outputs.len() == inputs.len() {
            true => Ok(outputs),
            false => Err(Error::Server(format!(
                "the model gave {} outputs for {} texts",
                outputs.len(),
                inputs.len()
            ))),
        });
    let stats = &shared.stats;
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats
        .texts
        .fetch_add(inputs.len() as u64, Ordering::Relaxed);
    stats.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
    match result {
        Ok(outputs) => {
            for ((job, index), output) in meta.into_iter().zip(outputs) {
                let mut progress = job.lock();
                if progress.reply.is_none() {
                    continue; // failed earlier
                }
                progress.outputs[index] = Some(output);
                progress.remaining -= 1;
                job.finish_if_done(&mut progress);
            }
        }
        Err(e) => {
            let message = e.to_string();
            for (job, _) in meta {
                if let Some(reply) = job.lock().reply.take() {
                    let _ = reply.send(Err(Error::Server(message.clone())));
                    shared.withdraw(job.id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Encoded {
        Encoded {
            ids: vec![1; n],
            type_ids: vec![0; n],
            untruncated_len: n,
        }
    }

    /// Each text's length and the number of the batch it ran in.
    type Recorded = Batcher<u8, (usize, usize)>;

    /// A batcher whose "model" reports each text's length and the batch it ran in, and the
    /// token count of every batch.
    fn recording(max_tokens: usize) -> (Recorded, Arc<Mutex<Vec<usize>>>) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&batches);
        let run = move |_: &u8, inputs: &[Encoded]| {
            let mut b = seen.lock().unwrap();
            b.push(inputs.iter().map(Encoded::len).sum());
            let batch = b.len();
            Ok(inputs.iter().map(|e| (e.len(), batch)).collect())
        };
        (Batcher::start(max_tokens, 100, Box::new(run)), batches)
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn outputs_come_back_in_order_within_the_token_budget() {
        let (batcher, batches) = recording(10);
        let ticket = batcher
            .submit(0, vec![text(4), text(5), text(3), text(12), text(1)])
            .unwrap();
        let done = block_on(ticket.wait()).unwrap();
        let lengths: Vec<usize> = done.outputs.iter().map(|o| o.0).collect();
        assert_eq!(lengths, [4, 5, 3, 12, 1]);
        for &tokens in batches.lock().unwrap().iter() {
            assert!(tokens <= 10 || tokens == 12, "a batch of {tokens} tokens");
        }
    }

    #[test]
    fn a_full_queue_refuses_and_an_empty_job_answers_at_once() {
        let (batcher, _) = recording(10);
        assert!(
            batcher
                .submit(0, (0..101).map(|_| text(1)).collect())
                .is_err()
        );
        let done = block_on(batcher.submit(0, Vec::new()).unwrap().wait()).unwrap();
        assert!(done.outputs.is_empty());
    }

    #[test]
    fn kinds_run_in_separate_batches() {
        let kinds = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&kinds);
        let run = move |k: &u8, inputs: &[Encoded]| {
            seen.lock().unwrap().push((*k, inputs.len()));
            Ok(inputs.iter().map(|_| *k).collect())
        };
        // Hold the worker until both jobs are queued.
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let g = Arc::clone(&gate);
        let run = move |k: &u8, inputs: &[Encoded]| {
            drop(g.lock().unwrap());
            run(k, inputs)
        };
        let batcher: Batcher<u8, u8> = Batcher::start(1000, 100, Box::new(run));
        let a = batcher.submit(1, vec![text(2), text(2)]).unwrap();
        let b = batcher.submit(2, vec![text(2)]).unwrap();
        drop(held);
        assert_eq!(block_on(a.wait()).unwrap().outputs, [1, 1]);
        assert_eq!(block_on(b.wait()).unwrap().outputs, [2]);
        let kinds = kinds.lock().unwrap();
        assert!(
            kinds
                .iter()
                .all(|&(k, n)| (k == 1 && n <= 2) || (k == 2 && n == 1))
        );
    }

    #[test]
    fn a_dropped_ticket_leaves_the_queue() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let g = Arc::clone(&gate);
        let run = move |_: &u8, inputs: &[Encoded]| {
            drop(g.lock().unwrap());
            Ok(inputs.iter().map(|_| ()).collect())
        };
        let batcher: Batcher<u8, ()> = Batcher::start(1, 100, Box::new(run));
        let first = batcher.submit(0, vec![text(1)]).unwrap();
        // The worker takes `first` and blocks on the gate; `second` waits in the queue.
        while batcher.queued() > 0 {
            std::thread::yield_now();
        }
        let second = batcher
            .submit(0, (0..5).map(|_| text(1)).collect())
            .unwrap();
        assert_eq!(batcher.queued(), 5);
        drop(second);
        assert_eq!(batcher.queued(), 0);
        assert_eq!(batcher.stats().cancelled.load(Ordering::Relaxed), 5);
        drop(held);
        block_on(first.wait()).unwrap();
        assert_eq!(batcher.stats().texts.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_failed_batch_fails_its_jobs_and_the_worker_goes_on() {
        let run = |k: &u8, inputs: &[Encoded]| match k {
            0 => Err(Error::InvalidArgument("boom".into())),
            1 => panic!("a bug"),
            _ => Ok(inputs.iter().map(|_| ()).collect()),
        };
        let batcher: Batcher<u8, ()> = Batcher::start(100, 100, Box::new(run));
        let err = block_on(batcher.submit(0, vec![text(1)]).unwrap().wait());
        assert!(err.err().unwrap().to_string().contains("boom"));
        let err = block_on(batcher.submit(1, vec![text(1)]).unwrap().wait());
        assert!(err.err().unwrap().to_string().contains("panicked"));
        assert!(block_on(batcher.submit(2, vec![text(1)]).unwrap().wait()).is_ok());
    }
}
