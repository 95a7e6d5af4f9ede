//! The MD5 of whole in-memory bodies, hashed together with those of concurrent requests.
//!
//! A small upload is held in memory until it is complete, then hashed in one go. Bodies that
//! complete at about the same moment are hashed side by side ([`super::digest_many`]: up to
//! eight with AVX2, about 5.5 x one stream's rate when eight wait, and sixteen with AVX-512).
//! They are gathered on the runtime's own threads, with no thread of their own: the first body
//! of a round lets the other ready requests run once (they add theirs), then hashes the round
//! and hands each request its digest. Under load several bodies join each round; alone, a body
//! waits one pass of the runtime. Without the wide path (no AVX2) every body is hashed inline.

use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::Md5;

/// Bodies hashed in one round at most (the lanes refill from them as messages end); the rest
/// of a larger gathering is left to a round of its own, which another thread may take.
const ROUND: usize = 4 * super::LANES;

struct Job {
    data: Bytes,
    done: oneshot::Sender<[u8; 16]>,
}

/// The bodies of the round being gathered. It is never empty while a [`Lead`] exists, and a
/// [`Lead`] exists whenever it is not empty: a body that finds it empty leads the next round.
static GATHERING: Mutex<Vec<Job>> = Mutex::new(Vec::new());

fn gathering() -> std::sync::MutexGuard<'static, Vec<Job>> {
    GATHERING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Held by the request whose body opened a round: when it is dropped, the round is hashed and
/// every request in it gets its digest. Dropping is the only way out, so a leading request that
/// goes away while the others wait still hashes their bodies.
struct Lead;

impl Drop for Lead {
    fn drop(&mut self) {
        let (round, more) = {
            let mut jobs = gathering();
            let n = jobs.len().min(ROUND);
            let round: Vec<Job> = jobs.drain(..n).collect();
            (round, !jobs.is_empty())
        };
        if !more {
            return hash_round(round);
        }
        // The rest keeps a lead (made after the lock is let go: dropping one takes it): a task
        // of its own where there is a runtime, which another worker may take; else this thread,
        // after this round.
        let rest = Lead;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { drop(rest) });
                hash_round(round);
            }
            Err(_) => {
                hash_round(round);
                drop(rest);
            }
        }
    }
}

/// Hashes a round side by side and answers each job.
fn hash_round(mut round: Vec<Job>) {
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

/// The MD5 of `data`, hashed with the bodies of the requests ready to run at the same moment.
pub async fn digest(data: Bytes) -> [u8; 16] {
    if !super::lanes::wide() {
        return Md5::digest(&data);
    }
    let (done, result) = oneshot::channel();
    let lead = {
        let mut jobs = gathering();
        jobs.push(Job {
            data: data.clone(),
            done,
        });
        // Built only when it leads: a `Lead` dropped here would take this lock again.
        if jobs.len() == 1 {
            Some(Lead)
        } else {
            None
        }
    };
    if let Some(lead) = lead {
        tokio::task::yield_now().await;
        drop(lead);
    }
    match result.await {
        Ok(d) => d,
        // Not reached (every gathered body is answered); hashed here all the same.
        Err(_) => Md5::digest(&data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashes every body as a request of its own, all at once, and checks each digest.
    async fn each_gets_its_own_digest(bodies: &[Bytes]) {
        let tasks: Vec<_> = bodies
            .iter()
            .cloned()
            .map(|b| tokio::spawn(digest(b)))
            .collect();
        for (task, body) in tasks.into_iter().zip(bodies) {
            assert_eq!(
                task.await.unwrap(),
                Md5::digest(body),
                "{} bytes",
                body.len()
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_bodies_get_their_own_digests() {
        let bodies: Vec<Bytes> = (0..64usize)
            .map(|k| {
                let len = [0, 100, 4096, 5000, 12_000, 70_000, 200_000][k % 7] + k;
                Bytes::from((0..len).map(|i| (i * 31 + k) as u8).collect::<Vec<u8>>())
            })
            .collect();
        each_gets_its_own_digest(&bodies).await;
    }

    /// On one thread every body joins the first round: past a full round, the rest is hashed in
    /// rounds of their own.
    #[tokio::test(flavor = "current_thread")]
    async fn a_gathering_larger_than_a_round_is_split() {
        let bodies: Vec<Bytes> = (0..3 * ROUND + 5)
            .map(|k| Bytes::from(vec![k as u8; 1000 + 37 * k]))
            .collect();
        each_gets_its_own_digest(&bodies).await;
    }

    /// A request that opened a round and went away before hashing it still answers the others.
    #[tokio::test(flavor = "current_thread")]
    async fn a_round_is_hashed_when_its_first_request_goes_away() {
        if !crate::storage::md5::lanes::wide() {
            return;
        }
        let body = |seed: usize| {
            Bytes::from(
                (0..6000 + seed)
                    .map(|i| (i * 7 + seed) as u8)
                    .collect::<Vec<u8>>(),
            )
        };
        let mut first = Box::pin(digest(body(0)));
        use futures_util::FutureExt;
        assert!(first.as_mut().now_or_never().is_none());
        let others: Vec<_> = (1..5).map(|k| tokio::spawn(digest(body(k)))).collect();
        // Let the others join the round and wait on it.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        drop(first);
        for (k, task) in (1..5).zip(others) {
            let answer = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
            assert_eq!(answer.expect("answered").unwrap(), Md5::digest(&body(k)));
        }
    }
}
