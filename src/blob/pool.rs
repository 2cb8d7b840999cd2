//! Read buffers for streamed downloads: chunk sizes that follow how fast the client drains
//! ([`Pacer`]), and a bounded pool that hands them out and recycles them ([`ReadPool`]).
//!
//! Invariant: buffers larger than a stream's floor held by all streams together never exceed
//! [`LARGE_BUDGET`] bytes; past it a stream reads smaller chunks, down to its floor
//! ([`MIN_CHUNK`], or one sealed segment for a decrypting read), which is never refused. So
//! memory per connection is bounded by how fast its client reads, not by how fast the disk is.
//! At most [`CACHE_BYTES`] of idle buffers are kept for reuse, and only those the load of the
//! last second reused ([`ReadPool::release_idle`]).
//!
//! Each buffer is an anonymous mapping of its own, not a block of the allocator's heaps: a
//! freed one the cache does not keep goes straight back to the system, and thousands of
//! connections churning through them leave no holes in the heaps (measured, issue 17: 100
//! slow encrypted downloads held 6 MiB less). A stream holds two to four buffers (HTTP/2
//! multiplies streams per connection), so past [`MAX_MAPPED`] mappings buffers come from the
//! heap: the process stays well inside the kernel's limit on mappings.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use memmap2::MmapMut;
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
/// fresh pages per chunk); the rest go back to the system.
pub const CACHE_BYTES: usize = 4 * 1024 * 1024;
/// Cached buffers no stream took for this long go back to the system.
const IDLE_AFTER: Duration = Duration::from_secs(1);
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
    lists: [Vec<Block>; CLASSES],
    bytes: usize,
    /// Of each class, the fewest buffers cached since the last [`ReadPool::release_idle`]:
    /// those nobody took.
    low: [usize; CLASSES],
    /// When idle buffers were last given back.
    since: Option<Instant>,
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

    /// A buffer of the grant's size to write into and then [`Buffer::freeze`]: a recycled
    /// one when one is free, else a new one (an anonymous mapping, see the module's docs).
    pub fn buffer(self: &Arc<Self>, grant: Grant) -> Buffer {
        let buf = match self.take(grant.size) {
            Some(buf) => buf,
            None => Block::new(grant.size),
        };
        Buffer(Lease {
            buf: Some(buf),
            len: 0,
            pool: self.clone(),
            _permit: grant.permit,
        })
    }

    /// The bytes `fill` writes into the first `len` (at most the grant's size) of a
    /// [`buffer`](Self::buffer); `fill` returns how many it wrote (at most `len`). The
    /// buffer returns to the pool when the last `Bytes` of it is dropped.
    pub fn fill<E>(
        self: &Arc<Self>,
        grant: Grant,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<Bytes, E> {
        let mut buf = self.buffer(grant);
        let dst = buf.as_mut();
        let len = len.min(dst.len());
        let n = match dst.get_mut(..len) {
            Some(dst) => fill(dst)?,
            None => 0,
        };
        Ok(buf.freeze(n.min(len)))
    }

    fn take(&self, size: usize) -> Option<Block> {
        let mut guard = self.free.lock().ok()?;
        let free = &mut *guard;
        let class = class_of(size);
        let buf = free.lists.get_mut(class)?.pop()?;
        free.bytes -= buf.len();
        if let (Some(low), Some(list)) = (free.low.get_mut(class), free.lists.get(class)) {
            *low = (*low).min(list.len());
        }
        Some(buf)
    }

    /// Give back the cached buffers no stream took since the last call at least
    /// [`IDLE_AFTER`] ago: of each size, as many as the cache never went below (the oldest).
    /// So the cache keeps what the load of the last second reused, and empties within two
    /// seconds of the last download (the server calls this every half second).
    pub fn release_idle(&self) {
        let now = Instant::now();
        let mut idle = Vec::new();
        let Ok(mut guard) = self.free.lock() else {
            return;
        };
        let free = &mut *guard;
        if free
            .since
            .is_some_and(|at| now.duration_since(at) < IDLE_AFTER)
        {
            return;
        }
        for (list, low) in free.lists.iter_mut().zip(free.low.iter_mut()) {
            idle.extend(list.drain(..(*low).min(list.len())));
            *low = list.len();
        }
        free.bytes -= idle.iter().map(|b| b.len()).sum::<usize>();
        free.since = Some(now);
        drop(guard);
        // Unmapped here, outside the lock.
        drop(idle);
    }

    fn put(&self, buf: Block) {
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

/// Buffers that are mappings of their own, live or cached, at most: past it a buffer comes from
/// the heap. A process may hold 65,530 mappings by default (`vm.max_map_count`), and the
/// allocator and the runtime's threads need theirs.
const MAX_MAPPED: usize = 16 * 1024;

/// Mapped buffers alive now.
static MAPPED: AtomicUsize = AtomicUsize::new(0);

/// A buffer's memory: an anonymous mapping of its own (while fewer than [`MAX_MAPPED`] are),
/// else a heap block.
#[derive(Debug)]
enum Block {
    Mapped(MmapMut),
    Heap(Box<[u8]>),
}

impl Block {
    fn new(size: usize) -> Self {
        if MAPPED.fetch_add(1, Ordering::Relaxed) < MAX_MAPPED
            && let Ok(map) = MmapMut::map_anon(size)
        {
            return Self::Mapped(map);
        }
        MAPPED.fetch_sub(1, Ordering::Relaxed);
        Self::Heap(vec![0; size].into_boxed_slice())
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Self::Mapped(_) = self {
            MAPPED.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl std::ops::Deref for Block {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Heap(h) => h,
        }
    }
}

impl std::ops::DerefMut for Block {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Heap(h) => h,
        }
    }
}

/// A pooled buffer being written, then frozen into the `Bytes` it lends; given back to the
/// pool (with its budget) when dropped, frozen or not.
pub struct Buffer(Lease);

impl Buffer {
    /// The whole buffer (the grant's size). A recycled buffer holds what its last use left.
    pub fn as_mut(&mut self) -> &mut [u8] {
        self.0.buf.as_deref_mut().unwrap_or_default()
    }

    /// Its first `len` bytes, shared; the buffer goes back to the pool when the last of
    /// them is dropped.
    pub fn freeze(mut self, len: usize) -> Bytes {
        let size = self.0.buf.as_ref().map_or(0, |b| b.len());
        self.0.len = len.min(size);
        Bytes::from_owner(self.0)
    }
}

/// A pooled buffer lent to a `Bytes`; given back on drop (with its budget).
struct Lease {
    buf: Option<Block>,
    len: usize,
    pool: Arc<ReadPool>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl AsRef<[u8]> for Lease {
    fn as_ref(&self) -> &[u8] {
        self.buf
            .as_ref()
            .and_then(|b| b.get(..self.len))
            .unwrap_or_default()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.put(buf);
        }
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
    fn cached_buffers_nobody_takes_go_back() {
        let pool = ReadPool::new();
        let fill = |size| pool.fill(pool.grant(size), 1, |_| Ok::<_, std::io::Error>(1));
        let started = |pool: &ReadPool, ago| {
            if let Ok(mut free) = pool.free.lock() {
                free.since = Instant::now().checked_sub(ago);
            }
        };
        // Four small buffers and a large one cached; the interval starts.
        let small: Vec<Bytes> = (0..4).map(|_| fill(MIN_CHUNK).unwrap()).collect();
        drop((small, fill(MAX_CHUNK).unwrap()));
        pool.release_idle();
        assert_eq!(pool.cached_bytes(), 4 * MIN_CHUNK + MAX_CHUNK);
        // Too soon: nothing goes.
        pool.release_idle();
        assert_eq!(pool.cached_bytes(), 4 * MIN_CHUNK + MAX_CHUNK);
        // Two small ones taken (and given back) during the interval: they stay; the two
        // the cache never went below, and the large one nobody took, go.
        drop((fill(MIN_CHUNK).unwrap(), fill(MIN_CHUNK).unwrap()));
        started(&pool, IDLE_AFTER);
        pool.release_idle();
        assert_eq!(pool.cached_bytes(), 2 * MIN_CHUNK);
        // A quiet second later the rest goes too.
        started(&pool, IDLE_AFTER);
        pool.release_idle();
        assert_eq!(pool.cached_bytes(), 0);
    }

    #[test]
    fn past_the_mapping_cap_buffers_come_from_the_heap() {
        let mut blocks = Vec::new();
        while blocks.len() < MAX_MAPPED + 64 {
            blocks.push(Block::new(MIN_CHUNK));
        }
        let mapped = blocks
            .iter()
            .filter(|b| matches!(b, Block::Mapped(_)))
            .count();
        assert!(
            mapped <= MAX_MAPPED && mapped + 64 <= blocks.len(),
            "{mapped}"
        );
        assert!(blocks.iter().all(|b| b.len() == MIN_CHUNK));
        drop(blocks);
        assert!(matches!(Block::new(MIN_CHUNK), Block::Mapped(_)));
    }

    #[test]
    fn buffers_are_recycled_and_the_cache_is_bounded() {
        let pool = ReadPool::new();
        let fill = |size, i| {
            pool.fill(pool.grant(size), 10, |b| {
                b.fill(i);
                Ok::<_, std::io::Error>(b.len())
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
            .fill(pool.grant(MAX_CHUNK), MAX_CHUNK, |b| {
                Ok::<_, std::io::Error>(b.len())
            })
            .unwrap();
        assert_eq!(again.len(), MAX_CHUNK);
        assert_eq!(pool.cached_bytes(), CACHE_BYTES - MAX_CHUNK);
        // A failed read gives its buffer back too.
        drop(again);
        assert!(
            pool.fill(pool.grant(MIN_CHUNK), 5, |_| Err(std::io::Error::other(
                "io"
            )))
            .is_err()
        );
        assert_eq!(pool.large_in_use(), 0);
    }
}
