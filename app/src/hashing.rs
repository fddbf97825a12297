//! The password-check pool: a fixed number of worker threads, each owning one argon2 memory block
//! that it reuses for every check, fed by a bounded queue.
//!
//! argon2 needs its memory cost (19 MiB with the default parameters) for every check. Allocating it
//! per check on tokio's blocking pool let a login flood spread hundreds of such buffers over many
//! threads' malloc arenas, which kept them: the process grew by hundreds of MiB and never shrank.
//! Here the memory is allocated once per worker, so the process holds at most `workers` buffers,
//! whatever the load; a flood waits in the queue (and then at the queue's door) instead.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};

use argon2::password_hash::{Output, PasswordHash};
use argon2::{Argon2, Block, Params};
use tokio::sync::oneshot;

/// Checks waiting for a worker, per worker; past it callers wait to enqueue.
const QUEUE_PER_WORKER: usize = 4;
/// The longest salt accepted (the PHC format's own limit is 64 characters of B64).
const MAX_SALT_BYTES: usize = 64;

struct Job {
    phc: Arc<str>,
    password: String,
    reply: oneshot::Sender<bool>,
}

/// A handle to the pool; the workers stop when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct HashPool {
    jobs: SyncSender<Job>,
    /// Lets async callers wait for room without blocking a runtime thread.
    room: Arc<tokio::sync::Semaphore>,
}

impl HashPool {
    /// Starts `workers` threads, each with a buffer of `max_blocks` argon2 blocks (the largest
    /// memory cost among the hashes it will check).
    pub fn start(workers: usize, max_blocks: usize) -> std::io::Result<Self> {
        let workers = workers.max(1);
        let capacity = workers * QUEUE_PER_WORKER;
        let (jobs, queue) = sync_channel::<Job>(capacity);
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..workers {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || work(&queue, max_blocks))?;
        }
        Ok(Self {
            jobs,
            room: Arc::new(tokio::sync::Semaphore::new(capacity)),
        })
    }

    /// True when `password` matches the PHC hash `phc`; false when it does not or cannot be checked.
    pub async fn verify(&self, phc: Arc<str>, password: String) -> bool {
        // The semaphore is never closed, so acquiring only waits.
        let Ok(_permit) = self.room.acquire().await else {
            return false;
        };
        let (reply, answer) = oneshot::channel();
        // Holding a permit means the queue has room, so this does not block.
        if self
            .jobs
            .try_send(Job {
                phc,
                password,
                reply,
            })
            .is_err()
        {
            tracing::error!("password-check pool is gone");
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

fn work(queue: &Mutex<Receiver<Job>>, max_blocks: usize) {
    let mut memory = vec![Block::default(); max_blocks];
    loop {
        // One worker waits on the queue at a time; the lock is released before the work. A worker
        // that panicked cannot leave the receiver half-updated, so a poisoned lock is still usable.
        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else { return };
        let matches = verify_with(&job.phc, job.password.as_bytes(), &mut memory);
        let _ = job.reply.send(matches);
    }
}

/// Verifies against a PHC string using `memory` as argon2's working memory.
pub fn verify_with(phc: &str, password: &[u8], memory: &mut [Block]) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let Ok(algorithm) = parsed.algorithm.try_into() else {
        return false;
    };
    let version = parsed
        .version
        .and_then(|v| v.try_into().ok())
        .unwrap_or_default();
    let mut salt_buf = [0u8; MAX_SALT_BYTES];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let argon2 = Argon2::new(algorithm, version, params);
    if argon2
        .hash_password_into_with_memory(password, salt, &mut out, memory)
        .is_err()
    {
        return false;
    }
    // Output's equality is constant-time.
    Output::new(&out).is_ok_and(|out| out == expected)
}

/// The number of argon2 blocks a PHC hash needs, if it parses.
pub fn blocks_needed(phc: &str) -> Option<usize> {
    let parsed = PasswordHash::new(phc).ok()?;
    Params::try_from(&parsed).ok().map(|p| p.block_count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pool_checks_right_and_wrong_passwords_with_reused_memory() {
        let phc: Arc<str> = crate::users::hash_password("s3cret").unwrap().into();
        let blocks = blocks_needed(&phc).unwrap();
        let pool = HashPool::start(2, blocks).unwrap();
        let checks = (0..8).map(|n| {
            let pool = pool.clone();
            let phc = Arc::clone(&phc);
            async move {
                pool.verify(phc, if n % 2 == 0 { "s3cret" } else { "wrong" }.into())
                    .await
            }
        });
        let results: Vec<bool> = futures_join_all(checks).await;
        assert_eq!(
            results,
            [true, false, true, false, true, false, true, false]
        );
        assert!(!pool.verify("not a hash".into(), "s3cret".into()).await);
    }

    #[test]
    fn too_little_memory_fails_closed() {
        let phc = crate::users::hash_password("s3cret").unwrap();
        let blocks = blocks_needed(&phc).unwrap();
        let mut memory = vec![Block::default(); blocks];
        assert!(verify_with(&phc, b"s3cret", &mut memory));
        assert!(!verify_with(&phc, b"s3cret", &mut memory[..blocks - 1]));
    }

    async fn futures_join_all<F: std::future::Future<Output = bool> + Send + 'static>(
        futures: impl Iterator<Item = F>,
    ) -> Vec<bool> {
        let handles: Vec<_> = futures.map(tokio::spawn).collect();
        let mut out = Vec::new();
        for handle in handles {
            out.push(handle.await.unwrap());
        }
        out
    }
}
