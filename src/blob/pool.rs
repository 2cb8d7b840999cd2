//! Read buffers for streamed downloads: chunk sizes that follow how fast the client drains
//! ([`Pacer`]), and a bounded pool that hands them out and recycles them ([`ReadPool`]).
//!
//! Invariant: buffers larger than a stream's floor held by all streams together never exceed
//! [`LARGE_BUDGET`] bytes; past it a stream reads smaller chunks, down to its floor
//! ([`MIN_CHUNK`], or one sealed segment for a decrypting read), which is never refused. So
//! memory per connection is bounded by how fast its client reads, not by how fast the disk is.
//! At most [`CACHE_BYTES`] of idle buffers are kept for reuse.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The smallest chunk: what a slow reader gets (2 MB/s drains it in 8 ms).
pub const MIN_CHUNK: usize = 16 * 1024;
/// The largest chunk: what a reader that keeps up with the disk gets (fewer hand-offs to the
/// blocking pool).
pub const MAX_CHUNK: usize = 1024 * 1024;
/// Where a stream starts, before anything is known of its reader.
pub const FIRST_CHUNK: usize = 64 * 1024;
/// Bytes of buffers above [`MIN_CHUNK`] all streams may hold at once: two readers at full
/// speed (one 1 MiB chunk being sent, one read ahead); more share it in smaller chunks (eight
/// fast readers of 64 MiB ran as fast as with 8 MiB). 100 slow readers starting together
/// take all of it, as each starts fast while the kernel's socket buffers fill: with 8 MiB
/// they peaked at 137 KiB per connection, with 4 MiB at 92 (by hand, issue 17).
pub const LARGE_BUDGET: usize = 4 * 1024 * 1024;
/// Idle buffers kept for the next chunk (so a fast stream neither allocates nor faults in
/// fresh pages per chunk); the rest go back to the allocator.
pub const CACHE_BYTES: usize = 4 * 1024 * 1024;
/// A chunk is sized to drain in about this long at the rate the previous one drained.
const DRAIN_TARGET: Duration = Duration::from_millis(4);
/// Size classes: powers of two from [`MIN_CHUNK`] to [`MAX_CHUNK`].
const CLASSES: usize = 7;

/// Sizes a stream's next chunk from how long its consumer took to take the previous one.
#[derive(Debug)]
pub struct Pacer {
    size: usize,
    handed: Option<(Instant, usize)>,
    /// Since the last time the consumer was found slow: when, and the bytes handed since.
    /// Until [`DRAIN_TARGET`] has passed, a quick take does not grow the chunks.
    held: Option<(Instant, usize)>,
}

impl Default for Pacer {
    fn default() -> Self {
        Self {
            size: FIRST_CHUNK,
            handed: None,
            held: None,
        }
    }
}

/// What a consumer that took `len` bytes in `gap` drains in [`DRAIN_TARGET`].
fn drains(len: usize, gap: Duration) -> f64 {
    let gap = gap.as_secs_f64();
    if gap > 0.0 {
        len as f64 / gap * DRAIN_TARGET.as_secs_f64()
    } else {
        f64::INFINITY
    }
}

/// The largest chunk class that drains in time (at least [`MIN_CHUNK`]).
fn class_draining(drains: f64) -> usize {
    let mut s = MIN_CHUNK;
    while s * 2 <= MAX_CHUNK && (s * 2) as f64 <= drains {
        s *= 2;
    }
    s
}

impl Pacer {
    /// A chunk of `len` bytes was handed to the consumer now.
    pub fn handed(&mut self, len: usize) {
        self.handed = Some((Instant::now(), len));
        if let Some((_, bytes)) = &mut self.held {
            *bytes += len;
        }
    }

    /// The consumer asks for the next chunk: the size to read. A reader that took the last
    /// chunk quickly gets one twice as large (up to [`MAX_CHUNK`]); a slow one at once gets
    /// what it drains in [`DRAIN_TARGET`] (down to [`MIN_CHUNK`]).
    ///
    /// A consumer found slow grows again only on what it took over at least [`DRAIN_TARGET`]:
    /// one that takes several chunks at once and then waits (a decrypting reader gathering a
    /// whole sealed segment for a slow client) would otherwise look fast at every burst, and
    /// get large chunks read ahead that then wait with it.
    pub fn next_size(&mut self) -> usize {
        if let Some((at, len)) = self.handed.take() {
            let quick = drains(len, at.elapsed());
            if quick < self.size as f64 {
                self.size = class_draining(quick);
                self.held = Some((Instant::now(), 0));
            } else if let Some((since, bytes)) = self.held {
                let span = since.elapsed();
                if span >= DRAIN_TARGET {
                    self.size = class_draining(drains(bytes, span));
                    self.held = None;
                }
            } else {
                self.size = (self.size * 2).min(MAX_CHUNK);
            }
        }
        self.size
    }

    /// The reader is slow: its chunks are the smallest (no read-ahead is worth its memory).
    pub fn slow(&self) -> bool {
        self.size <= MIN_CHUNK
    }
}

/// The right to use one buffer of `size` bytes (counted against [`LARGE_BUDGET`] when larger
/// than [`MIN_CHUNK`]).
#[derive(Debug)]
pub struct Grant {
    size: usize,
    permit: Option<OwnedSemaphorePermit>,
}

impl Grant {
    /// The buffer's size: the most one read with it may fill.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// The process's pool: one budget for every download, whichever store it reads.
pub fn shared() -> &'static Arc<ReadPool> {
    static POOL: std::sync::LazyLock<Arc<ReadPool>> = std::sync::LazyLock::new(ReadPool::new);
    &POOL
}

/// A pool of download read buffers.
#[derive(Debug)]
pub struct ReadPool {
    large: Arc<Semaphore>,
    free: Mutex<Free>,
}

#[derive(Debug, Default)]
struct Free {
    lists: [Vec<Vec<u8>>; CLASSES],
    bytes: usize,
}

fn class_of(size: usize) -> usize {
    ((size / MIN_CHUNK).trailing_zeros() as usize).min(CLASSES - 1)
}

fn units(size: usize) -> u32 {
    u32::try_from(size / MIN_CHUNK).unwrap_or(u32::MAX)
}

impl ReadPool {
    /// An empty pool with the default budget.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            large: Arc::new(Semaphore::new(LARGE_BUDGET / MIN_CHUNK)),
            free: Mutex::new(Free::default()),
        })
    }

    /// The largest buffer up to `want` bytes the budget allows now (never less than
    /// [`MIN_CHUNK`]; never waits).
    pub fn grant(&self, want: usize) -> Grant {
        self.grant_at_least(MIN_CHUNK, want)
    }

    /// The largest buffer up to `want` bytes the budget allows now, and never less than
    /// `floor` (a power of two from [`MIN_CHUNK`] to [`MAX_CHUNK`]; a buffer of that size is
    /// granted outside the budget when it is spent, so a stream is slowed, never refused).
    pub fn grant_at_least(&self, floor: usize, want: usize) -> Grant {
        let floor = floor.clamp(MIN_CHUNK, MAX_CHUNK).next_power_of_two();
        let mut size = want.clamp(floor, MAX_CHUNK).next_power_of_two();
        if size > want.max(floor) {
            size /= 2;
        }
        while size > MIN_CHUNK {
            if let Ok(permit) = self.large.clone().try_acquire_many_owned(units(size)) {
                return Grant {
                    size,
                    permit: Some(permit),
                };
            }
            if size <= floor {
                break;
            }
            size /= 2;
        }
        Grant {
            size: floor,
            permit: None,
        }
    }

    /// The bytes `fill` writes into the first `len` (at most the grant's size) of a buffer,
    /// a recycled one when one is free; `fill` returns how many it wrote (at most `len`).
    /// The buffer returns to the pool when the last `Bytes` of it is dropped.
    pub fn fill<E>(
        self: &Arc<Self>,
        grant: Grant,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<Bytes, E> {
        let len = len.min(grant.size);
        let mut buf = self
            .take(grant.size)
            .unwrap_or_else(|| vec![0u8; grant.size]);
        let result = match buf.get_mut(..len) {
            Some(dst) => fill(dst),
            None => Ok(0),
        };
        let mut lease = Lease {
            buf,
            len: 0,
            pool: self.clone(),
            _permit: grant.permit,
        };
        result.map(|n| {
            lease.len = n.min(len);
            Bytes::from_owner(lease)
        })
    }

    fn take(&self, size: usize) -> Option<Vec<u8>> {
        let mut free = self.free.lock().ok()?;
        let buf = free.lists.get_mut(class_of(size))?.pop()?;
        free.bytes -= buf.len();
        Some(buf)
    }

    fn put(&self, buf: Vec<u8>) {
        let size = buf.len();
        if !(MIN_CHUNK..=MAX_CHUNK).contains(&size) || !size.is_power_of_two() {
            return;
        }
        let Ok(mut guard) = self.free.lock() else {
            return;
        };
        let free = &mut *guard;
        if free.bytes + size > CACHE_BYTES {
            return;
        }
        if let Some(list) = free.lists.get_mut(class_of(size)) {
            list.push(buf);
            free.bytes += size;
        }
    }

    /// Bytes of idle buffers kept for reuse.
    pub fn cached_bytes(&self) -> usize {
        self.free.lock().map(|f| f.bytes).unwrap_or(0)
    }

    /// Bytes of the large-buffer budget in use now.
    pub fn large_in_use(&self) -> usize {
        LARGE_BUDGET - self.large.available_permits() * MIN_CHUNK
    }
}

/// A pooled buffer lent to a `Bytes`; given back on drop (with its budget).
struct Lease {
    buf: Vec<u8>,
    len: usize,
    pool: Arc<ReadPool>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl AsRef<[u8]> for Lease {
    fn as_ref(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_reader_grows_a_slow_one_shrinks_at_once() {
        let mut p = Pacer::default();
        assert_eq!(p.next_size(), FIRST_CHUNK);
        for _ in 0..10 {
            let n = p.next_size();
            p.handed(n);
        }
        assert_eq!(p.next_size(), MAX_CHUNK);
        p.handed(MAX_CHUNK);
        // 1 MiB taken in 1 s: 1 MB/s drains ~4 KiB in 4 ms.
        p.handed = Some((Instant::now() - Duration::from_secs(1), MAX_CHUNK));
        assert_eq!(p.next_size(), MIN_CHUNK);
        assert!(p.slow());
        // 64 KiB in 1 ms: 64 MB/s drains 256 KiB in 4 ms.
        p.size = 64 * 1024;
        p.held = None;
        p.handed = Some((Instant::now() - Duration::from_millis(1), 64 * 1024));
        assert_eq!(p.next_size(), 128 * 1024);
    }

    #[test]
    fn a_consumer_that_takes_chunks_in_bursts_is_paced_by_what_it_takes_over_time() {
        let mut p = Pacer::default();
        // Slow: 64 KiB taken in 32 ms (2 MB/s), then four chunks at once, three times over.
        for _ in 0..3 {
            p.handed = Some((Instant::now() - Duration::from_millis(32), 64 * 1024));
            assert_eq!(p.next_size(), MIN_CHUNK);
            for _ in 0..4 {
                // Still within the hold, however long the test thread was preempted.
                p.held = p.held.map(|(_, bytes)| (Instant::now(), bytes));
                p.handed(MIN_CHUNK);
                assert_eq!(p.next_size(), MIN_CHUNK);
                assert!(p.slow());
            }
        }
        // Fast again: after the hold, the size follows the bytes taken over it.
        let then = Instant::now() - DRAIN_TARGET * 2;
        p.held = Some((then, 512 * 1024));
        p.handed(MIN_CHUNK);
        assert_eq!(p.next_size(), 256 * 1024);
        p.handed(256 * 1024);
        assert_eq!(p.next_size(), 512 * 1024);
    }

    #[test]
    fn the_budget_bounds_large_buffers_and_never_refuses_small_ones() {
        let pool = ReadPool::new();
        let mut held = Vec::new();
        for _ in 0..LARGE_BUDGET / MAX_CHUNK {
            let g = pool.grant(MAX_CHUNK);
            assert_eq!(g.size(), MAX_CHUNK);
            held.push(g);
        }
        assert_eq!(pool.large_in_use(), LARGE_BUDGET);
        assert_eq!(pool.grant(MAX_CHUNK).size(), MIN_CHUNK);
        // A floor is granted outside the spent budget.
        let seg = pool.grant_at_least(64 * 1024, MAX_CHUNK);
        assert_eq!((seg.size(), seg.permit.is_none()), (64 * 1024, true));
        held.pop();
        assert_eq!(pool.grant(3 * MAX_CHUNK / 2).size(), MAX_CHUNK);
        assert_eq!(pool.grant_at_least(64 * 1024, 100_000).size(), 64 * 1024);
    }

    #[test]
    fn buffers_are_recycled_and_the_cache_is_bounded() {
        let pool = ReadPool::new();
        let fill = |size, i| {
            pool.fill(pool.grant(size), 10, |b| {
                b.fill(i);
                Ok::<_, ()>(b.len())
            })
            .unwrap()
        };
        // The whole budget in large buffers, and more than the cache holds in floor ones.
        let large = LARGE_BUDGET / MAX_CHUNK;
        let mut chunks: Vec<Bytes> = (0..large).map(|i| fill(MAX_CHUNK, i as u8)).collect();
        chunks.extend((0..CACHE_BYTES / MIN_CHUNK).map(|_| fill(MIN_CHUNK, 9)));
        assert_eq!(&chunks[1][..], &[1u8; 10]);
        assert_eq!(pool.large_in_use(), LARGE_BUDGET);
        drop(chunks);
        assert_eq!(pool.large_in_use(), 0);
        assert_eq!(pool.cached_bytes(), CACHE_BYTES);
        let again = pool
            .fill(pool.grant(MAX_CHUNK), MAX_CHUNK, |b| Ok::<_, ()>(b.len()))
            .unwrap();
        assert_eq!(again.len(), MAX_CHUNK);
        assert_eq!(pool.cached_bytes(), CACHE_BYTES - MAX_CHUNK);
        // A failed read gives its buffer back too.
        drop(again);
        assert!(pool.fill(pool.grant(MIN_CHUNK), 5, |_| Err("io")).is_err());
        assert_eq!(pool.large_in_use(), 0);
    }
}
