//! The MD5 of whole in-memory bodies, hashed together with those of concurrent requests.
//!
//! A small upload is held in memory until it is complete. Rather than hashing it on the
//! request's own thread, [`digest`] hands it to one hashing thread, which takes every body
//! waiting at that moment and hashes them side by side ([`super::digest_many`]). Under load
//! several bodies wait each time and cost little more than one body's time; alone, a body
//! costs what inline hashing would, plus one hand-over. Bodies below [`BATCHED_FROM`] bytes, bodies that
//! find a full round already waiting (the thread is the bottleneck) and every body on a CPU
//! without the wide path are hashed inline.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::Md5;

/// Smaller bodies are hashed inline: the hand-over (two thread wake-ups) costs about what
/// sharing saves (measured under load: 10 KB bodies do slightly better inline, 50 KB ones
/// about a sixth better shared).
pub const BATCHED_FROM: usize = 16 * 1024;
/// Bodies taken in one round at most (the lanes refill from them as messages end).
const ROUND: usize = 4 * super::LANES;

struct Job {
    data: Bytes,
    done: oneshot::Sender<[u8; 16]>,
}

struct Queue {
    /// The bodies waiting; `None` once the hashing thread has stopped.
    jobs: Mutex<Option<VecDeque<Job>>>,
    ready: Condvar,
}

/// The hashing thread's queue, started on first use; `None` when the thread could not start
/// or the CPU has no wide path.
fn queue() -> Option<&'static Queue> {
    static QUEUE: OnceLock<Option<&'static Queue>> = OnceLock::new();
    *QUEUE.get_or_init(|| {
        if !super::lanes::wide() {
            return None;
        }
        let queue: &'static Queue = Box::leak(Box::new(Queue {
            jobs: Mutex::new(Some(VecDeque::new())),
            ready: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("nephos-md5".into())
            .spawn(move || run(queue))
            .map_err(|e| tracing::warn!(error = %e, "hashing thread did not start; hashing inline"))
            .ok()
            .map(|_| queue)
    })
}

/// Closes the queue when the hashing thread ends, however it ends: the bodies still waiting
/// are let go (their requests hash them themselves) and later ones are not queued.
struct Closer(&'static Queue);

impl Drop for Closer {
    fn drop(&mut self) {
        let mut jobs = self.0.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.take();
    }
}

fn run(queue: &'static Queue) {
    let _closer = Closer(queue);
    let mut round = Vec::with_capacity(ROUND);
    loop {
        {
            let Ok(guard) = queue.jobs.lock() else {
                return;
            };
            let waiting = queue
                .ready
                .wait_while(guard, |jobs| jobs.as_ref().is_some_and(VecDeque::is_empty));
            let Ok(mut guard) = waiting else {
                return;
            };
            let Some(jobs) = guard.as_mut() else {
                return;
            };
            let n = jobs.len().min(ROUND);
            round.extend(jobs.drain(..n));
        }
        let messages: Vec<&[u8]> = round.iter().map(|j| &j.data[..]).collect();
        let digests = super::digest_many(&messages);
        drop(messages);
        for (Job { data, done }, digest) in round.drain(..).zip(digests) {
            // Let go of the body first: the request may reuse its buffer once answered.
            drop(data);
            // The request may have gone away meanwhile.
            let _ = done.send(digest);
        }
    }
}

/// The MD5 of `data`.
pub async fn digest(data: Bytes) -> [u8; 16] {
    let queue = match queue() {
        Some(q) if data.len() >= BATCHED_FROM => q,
        _ => return Md5::digest(&data),
    };
    let (done, result) = oneshot::channel();
    let job = Job {
        data: data.clone(),
        done,
    };
    {
        let Ok(mut guard) = queue.jobs.lock() else {
            return Md5::digest(&data);
        };
        // A full round already waits: the hashing thread is the bottleneck (on a machine with
        // many cores), and this body is hashed here.
        let Some(jobs) = guard.as_mut().filter(|jobs| jobs.len() < ROUND) else {
            drop(guard);
            return Md5::digest(&data);
        };
        jobs.push_back(job);
    }
    queue.ready.notify_one();
    match result.await {
        Ok(d) => d,
        // The hashing thread stopped before this body's turn: hash it here.
        Err(_) => Md5::digest(&data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_bodies_get_their_own_digests() {
        let bodies: Vec<Bytes> = (0..64usize)
            .map(|k| {
                let len = [0, 100, 4096, 5000, 70_000, 200_000][k % 6] + k;
                Bytes::from((0..len).map(|i| (i * 31 + k) as u8).collect::<Vec<u8>>())
            })
            .collect();
        let tasks: Vec<_> = bodies
            .iter()
            .cloned()
            .map(|b| tokio::spawn(digest(b)))
            .collect();
        for (task, body) in tasks.into_iter().zip(&bodies) {
            assert_eq!(
                task.await.unwrap(),
                Md5::digest(body),
                "{} bytes",
                body.len()
            );
        }
    }
}
