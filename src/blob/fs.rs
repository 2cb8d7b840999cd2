//! The local-filesystem backend: `<root>/blobs/ab/cd/<uuid>`, staged in `<root>/tmp`.
//!
//! Invariant: every path is opened component by component from the canonical root with
//! `O_NOFOLLOW`, so a symlink planted anywhere under the root is refused, never followed; blob
//! names come from [`BlobKey`] only. New blobs are written to a temp file on the same
//! filesystem, fsynced, renamed into place without replacing anything, and the shard directory
//! is fsynced so the rename survives power loss.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags};

use super::pool::{self, Pacer};
use super::{
    BlobBackend, BlobError, BlobKey, BlobWriter, BoxFuture, ByteStream, Cuts, Inventory, StoredBlob,
};
use crate::blocking;

const BLOBS: &str = "blobs";
const TMP: &str = "tmp";
/// Where deletions were staged before they were queued in the database; emptied at open.
const LEGACY_TRASH: &str = "trash";
/// Ranges up to this size are served from a single read.
const READ_CHUNK: usize = 256 * 1024;
/// Larger ranges stream in chunks sized by `pool::Pacer`, from `pool::ReadPool`.
/// Writes are batched into buffers of this size and written while the next one fills.
const WRITE_CHUNK: usize = 512 * 1024;
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// The local-filesystem backend.
#[derive(Debug, Clone)]
pub struct LocalFs {
    root: Arc<PathBuf>,
    dirs: Arc<Dirs>,
}

/// The three working folders, opened once (with `O_NOFOLLOW`) when the store opens.
#[derive(Debug)]
struct Dirs {
    blobs: OwnedFd,
    tmp: OwnedFd,
    /// Whether `openat2` works here (it may be missing, or refused by a seccomp filter).
    openat2: AtomicBool,
}

fn join_err(e: blocking::JoinError) -> BlobError {
    BlobError::Io(std::io::Error::other(e))
}

fn io(e: rustix::io::Errno) -> BlobError {
    BlobError::from_io(e.into())
}

impl LocalFs {
    /// Open the root, creating it (mode 0700) and its subfolders when missing.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(root)?;
        let root = root.canonicalize()?;
        let root_fd = rustix::fs::open(
            &root,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let sub = |name: &str| -> std::io::Result<OwnedFd> {
            match rustix::fs::mkdirat(&root_fd, name, Mode::from_raw_mode(DIR_MODE)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            open_dir(&root_fd, name).map_err(|_| {
                std::io::Error::other(format!(
                    "{} is not a directory (symlinks are refused)",
                    root.join(name).display()
                ))
            })
        };
        let blobs = sub(BLOBS)?;
        // The first shard level up front: uploads then create at most one directory.
        for a in 0..=255u8 {
            match rustix::fs::mkdirat(&blobs, format!("{a:02x}"), Mode::from_raw_mode(DIR_MODE)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        rustix::fs::fsync(&blobs)?;
        let dirs = Dirs {
            blobs,
            tmp: sub(TMP)?,
            openat2: AtomicBool::new(true),
        };
        // Blobs an earlier version was deleting (their rows were going too): finish the job.
        // A row such a crash left behind is reported by `coffer check` as missing its blob.
        match std::fs::remove_dir_all(root.join(LEGACY_TRASH)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Ok(Self {
            root: Arc::new(root),
            dirs: Arc::new(dirs),
        })
    }

    /// The canonical root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Open the shard directory of `key`, creating missing levels when `create`.
    fn shard(&self, key: &BlobKey, create: bool) -> Result<OwnedFd, BlobError> {
        let (a, b, _) = key.parts();
        let level_a = open_or_create(&self.dirs.blobs, a, create)?;
        open_or_create(&level_a, b, create)
    }

    /// `len` bytes from `offset`: a small range in one blocking hop, a larger one in chunks
    /// (cut at record boundaries when `cuts` says where they are).
    async fn read_range(
        self,
        key: BlobKey,
        offset: u64,
        len: u64,
        cuts: Option<Cuts>,
    ) -> Result<ByteStream, BlobError> {
        if len <= READ_CHUNK as u64 {
            // Small reads (thumbnails, 4 KiB documents): open and read in one blocking hop.
            let bytes = blocking::run(move || -> Result<Bytes, BlobError> {
                let file = self.open_blob(&key)?;
                read_exact_at(&file, offset, len)
            })
            .await
            .map_err(join_err)??;
            let s = futures_util::stream::once(async move { Ok(bytes) });
            return Ok(Box::pin(s));
        }
        let file = blocking::run(move || self.open_blob(&key))
            .await
            .map_err(join_err)??;
        Ok(Box::pin(chunks(Arc::new(file), offset, len, cuts)))
    }

    fn open_blob(&self, key: &BlobKey) -> Result<File, BlobError> {
        // NONBLOCK: a FIFO planted in the tree must not hang the reader (fstat refuses it).
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = if self.dirs.openat2.load(Ordering::Relaxed) {
            // One syscall, and the kernel refuses any symlink or escape on the way.
            let resolve =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(
                &self.dirs.blobs,
                key.as_str(),
                flags,
                Mode::empty(),
                resolve,
            ) {
                Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
                    self.dirs.openat2.store(false, Ordering::Relaxed);
                    self.walk_open(key, flags)?
                }
                other => other.map_err(io)?,
            }
        } else {
            self.walk_open(key, flags)?
        };
        let file = File::from(fd);
        if !file.metadata().map_err(BlobError::from_io)?.is_file() {
            return Err(BlobError::Unsafe);
        }
        Ok(file)
    }

    /// Open component by component, each with `O_NOFOLLOW` (kernels without `openat2`).
    fn walk_open(&self, key: &BlobKey, flags: OFlags) -> Result<OwnedFd, BlobError> {
        let dir = self.shard(key, false)?;
        rustix::fs::openat(&dir, key.parts().2, flags, Mode::empty()).map_err(io)
    }
}

fn open_dir(parent: &OwnedFd, name: &str) -> Result<OwnedFd, BlobError> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io)
}

/// Open `parent/name` as a directory; when it is missing and `create`, make it and fsync
/// `parent` so the new entry survives a crash.
fn open_or_create(parent: &OwnedFd, name: &str, create: bool) -> Result<OwnedFd, BlobError> {
    match open_dir(parent, name) {
        Err(BlobError::NotFound) if create => {
            match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(DIR_MODE)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(io(e)),
            }
            let dir = open_dir(parent, name)?;
            rustix::fs::fsync(parent).map_err(io)?;
            Ok(dir)
        }
        other => other,
    }
}

impl BlobBackend for LocalFs {
    fn put(&self, key: &BlobKey) -> BoxFuture<'_, Result<Box<dyn BlobWriter>, BlobError>> {
        let this = self.clone();
        let key = key.clone();
        Box::pin(async move {
            let w = blocking::run(move || -> Result<_, BlobError> {
                let tmp = &this.dirs.tmp;
                let name = format!("{}.part", uuid::Uuid::new_v4());
                let fd = rustix::fs::openat(
                    tmp,
                    &name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(FILE_MODE),
                )
                .map_err(io)?;
                Ok(FsWriter {
                    fs: this,
                    key,
                    name,
                    append: None,
                    file: Arc::new(File::from(fd)),
                    buf: BytesMut::with_capacity(WRITE_CHUNK),
                    inflight: None,
                    written: 0,
                    done: false,
                })
            })
            .await
            .map_err(join_err)??;
            Ok(Box::new(w) as Box<dyn BlobWriter>)
        })
    }

    fn append(
        &self,
        key: &BlobKey,
        at: u64,
    ) -> BoxFuture<'_, Result<Option<Box<dyn BlobWriter>>, BlobError>> {
        let this = self.clone();
        let key = key.clone();
        Box::pin(async move {
            let w = blocking::run(move || -> Result<_, BlobError> {
                let dir = this.shard(&key, true)?;
                let name = key.parts().2;
                let flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let (fd, created) = match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
                    Ok(fd) => (fd, false),
                    Err(rustix::io::Errno::NOENT) if at == 0 => (
                        rustix::fs::openat(
                            &dir,
                            name,
                            flags | OFlags::CREATE | OFlags::EXCL,
                            Mode::from_raw_mode(FILE_MODE),
                        )
                        .map_err(io)?,
                        true,
                    ),
                    Err(e) => return Err(io(e)),
                };
                let file = File::from(fd);
                // One writer at a time, across processes: a request whose lease on the
                // upload ran out while it stalled cannot write between another's bytes.
                match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                {
                    Ok(()) => {}
                    Err(rustix::io::Errno::WOULDBLOCK) => return Err(BlobError::Busy),
                    Err(e) => return Err(io(e)),
                }
                let meta = file.metadata().map_err(BlobError::from_io)?;
                if !meta.is_file() {
                    return Err(BlobError::Unsafe);
                }
                if meta.len() < at {
                    return Err(BlobError::Short);
                }
                // What a PATCH that did not finish left after the durable bytes goes.
                rustix::fs::ftruncate(&file, at).map_err(io)?;
                let mut file = file;
                std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(at))
                    .map_err(BlobError::from_io)?;
                Ok(FsWriter {
                    fs: this.clone(),
                    key,
                    name: String::new(),
                    append: Some(Appending { at, created }),
                    file: Arc::new(file),
                    buf: BytesMut::with_capacity(WRITE_CHUNK),
                    inflight: None,
                    written: at,
                    done: false,
                })
            })
            .await
            .map_err(join_err)??;
            Ok(Some(Box::new(w) as Box<dyn BlobWriter>))
        })
    }

    fn can_link(&self) -> bool {
        true
    }

    fn link<'a>(
        &'a self,
        from: &'a BlobKey,
        to: &'a BlobKey,
    ) -> BoxFuture<'a, Result<(), BlobError>> {
        let this = self.clone();
        let (from, to) = (from.clone(), to.clone());
        Box::pin(async move {
            blocking::run(move || -> Result<(), BlobError> {
                let src = this.shard(&from, false)?;
                let dst = this.shard(&to, true)?;
                // linkat never follows a symlink at `from` (no AT_SYMLINK_FOLLOW), and fails
                // when `to` exists.
                rustix::fs::linkat(&src, from.parts().2, &dst, to.parts().2, AtFlags::empty())
                    .map_err(io)?;
                rustix::fs::fsync(&dst).map_err(io)
            })
            .await
            .map_err(join_err)?
        })
    }

    fn get_range(
        &self,
        key: &BlobKey,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'_, Result<ByteStream, BlobError>> {
        Box::pin(self.clone().read_range(key.clone(), offset, len, None))
    }

    fn get_records(
        &self,
        key: &BlobKey,
        offset: u64,
        len: u64,
        cuts: Cuts,
    ) -> BoxFuture<'_, Result<ByteStream, BlobError>> {
        Box::pin(
            self.clone()
                .read_range(key.clone(), offset, len, Some(cuts)),
        )
    }

    fn stat(&self, key: &BlobKey) -> BoxFuture<'_, Result<u64, BlobError>> {
        let this = self.clone();
        let key = key.clone();
        Box::pin(async move {
            blocking::run(move || {
                Ok(this
                    .open_blob(&key)?
                    .metadata()
                    .map_err(BlobError::from_io)?
                    .len())
            })
            .await
            .map_err(join_err)?
        })
    }

    fn delete(&self, key: &BlobKey) -> BoxFuture<'_, Result<(), BlobError>> {
        let this = self.clone();
        let key = key.clone();
        Box::pin(async move {
            blocking::run(move || {
                let dir = this.shard(&key, false)?;
                // unlinkat never follows a symlink: a planted link is removed, not its target.
                rustix::fs::unlinkat(&dir, key.parts().2, AtFlags::empty()).map_err(io)?;
                // The name's removal survives a crash once its directory is synced.
                rustix::fs::fsync(&dir).map_err(io)
            })
            .await
            .map_err(join_err)?
        })
    }

    /// Under the writers' own lock (`flock`, as [`BlobBackend::append`] takes it): a blob a
    /// PATCH is appending to now is left alone.
    fn delete_unless_held(&self, key: &BlobKey) -> BoxFuture<'_, Result<bool, BlobError>> {
        let this = self.clone();
        let key = key.clone();
        Box::pin(async move {
            blocking::run(move || {
                let dir = this.shard(&key, false)?;
                let name = key.parts().2;
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
                let file = rustix::fs::openat(&dir, name, flags, Mode::empty()).map_err(io)?;
                match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                {
                    Ok(()) => {}
                    Err(rustix::io::Errno::WOULDBLOCK) => return Ok(false),
                    Err(e) => return Err(io(e)),
                }
                // Unlinked while locked: no writer can take it between the check and this.
                rustix::fs::unlinkat(&dir, name, AtFlags::empty()).map_err(io)?;
                rustix::fs::fsync(&dir).map_err(io)?;
                Ok(true)
            })
            .await
            .map_err(join_err)?
        })
    }

    /// `id` is a temp file's name in `tmp/` (the key is not needed: the name is unique). Only
    /// the exact shape this backend makes (`<uuid>.part`) is accepted, so a recorded id can
    /// never name anything outside `tmp/`.
    fn abort_staged<'a>(
        &'a self,
        _key: &'a BlobKey,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), BlobError>> {
        let this = self.clone();
        let name = id.to_owned();
        Box::pin(async move {
            if !is_temp_name(&name) {
                return Err(BlobError::Unsafe);
            }
            blocking::run(move || {
                match rustix::fs::unlinkat(&this.dirs.tmp, &*name, AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
                    Err(e) => Err(io(e)),
                }
            })
            .await
            .map_err(join_err)?
        })
    }

    fn clear_staging(&self) -> BoxFuture<'_, Result<usize, BlobError>> {
        let root = self.root.clone();
        Box::pin(async move {
            blocking::run(move || {
                let mut n = 0;
                for entry in std::fs::read_dir(root.join(TMP)).map_err(BlobError::from_io)? {
                    let entry = entry.map_err(BlobError::from_io)?;
                    // remove_file never follows a symlink; it removes the link itself.
                    if entry.file_type().map_err(BlobError::from_io)?.is_dir() {
                        std::fs::remove_dir_all(entry.path()).map_err(BlobError::from_io)?;
                    } else {
                        std::fs::remove_file(entry.path()).map_err(BlobError::from_io)?;
                    }
                    n += 1;
                }
                Ok(n)
            })
            .await
            .map_err(join_err)?
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Inventory, BlobError>> {
        let root = self.root.clone();
        Box::pin(async move { blocking::run(move || walk(&root)).await.map_err(join_err)? })
    }

    fn read_blocking(
        &self,
        key: &BlobKey,
        offset: u64,
        len: u64,
    ) -> Option<Result<Bytes, BlobError>> {
        Some(
            self.open_blob(key)
                .and_then(|file| read_exact_at(&file, offset, len)),
        )
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        let this = self.clone();
        Box::pin(async move {
            // By path, not through the folders held open: a root that was moved or removed,
            // made read-only or remounted read-only must make the service unready. A check,
            // not a test write, so a flood of probes costs no disk I/O.
            blocking::run(move || {
                [BLOBS, TMP].iter().all(|d| {
                    rustix::fs::access(
                        this.root.join(d),
                        rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
                    )
                    .is_ok()
                })
            })
            .await
            .unwrap_or(false)
        })
    }
}

/// A temp file name as [`LocalFs::put`] makes it: `<uuid>.part`.
fn is_temp_name(name: &str) -> bool {
    name.strip_suffix(".part")
        .and_then(|id| uuid::Uuid::try_parse(id).ok())
        .is_some_and(|u| format!("{u}.part") == name)
}

fn read_exact_at(file: &File, offset: u64, len: u64) -> Result<Bytes, BlobError> {
    let mut buf = vec![0u8; usize::try_from(len).map_err(|_| BlobError::Short)?];
    match file.read_exact_at(&mut buf, offset) {
        Ok(()) => Ok(Bytes::from(buf)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(BlobError::Short),
        Err(e) => Err(BlobError::from_io(e)),
    }
}

/// Read `[offset, offset + len)` in chunks, one short blocking task per chunk. No thread is
/// held between chunks, so a client that stops reading costs a connection and its chunks,
/// never a blocking-pool thread, and only until the send timeout. Chunk sizes follow the
/// client ([`Pacer`]): a fast reader gets large chunks, one read ahead so the disk read of
/// chunk n+1 overlaps the network write of chunk n; a slow one gets small chunks read on
/// demand (the socket's buffer hides the read). Buffers come from the shared [`ReadPool`],
/// whose budget bounds the large ones.
fn chunks(
    file: Arc<File>,
    offset: u64,
    len: u64,
    cuts: Option<Cuts>,
) -> impl futures_util::Stream<Item = Result<Bytes, BlobError>> + Send {
    type Read = tokio::task::JoinHandle<Result<Bytes, BlobError>>;
    struct State {
        file: Arc<File>,
        pos: u64,
        end: u64,
        pacer: Pacer,
        ahead: Option<Read>,
        cuts: Option<Cuts>,
    }
    impl State {
        fn read_next(&mut self, want: usize) -> Option<Read> {
            if self.pos >= self.end {
                return None;
            }
            let pool = pool::shared();
            let grant = pool.grant(want);
            let (file, at) = (self.file.clone(), self.pos);
            let mut n = (self.end - at).min(grant.size() as u64);
            // A slow reader's small pieces end where records end (it would otherwise keep
            // the start of the next record while it sends this one); a fast reader's are as
            // large as its buffer (fewer hand-offs; it gathers a record cut in two at once).
            if let Some(cuts) = self.cuts.filter(|_| grant.size() <= pool::MIN_CHUNK) {
                n = cuts.piece(at, n);
            }
            self.pos += n;
            let n = usize::try_from(n).unwrap_or(grant.size());
            Some(tokio::task::spawn_blocking(move || {
                pool.fill(grant, n, |buf| match file.read_exact_at(buf, at) {
                    Ok(()) => Ok(buf.len()),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        Err(BlobError::Short)
                    }
                    Err(e) => Err(BlobError::from_io(e)),
                })
            }))
        }
    }
    let start = State {
        file,
        pos: offset,
        end: offset.saturating_add(len),
        pacer: Pacer::default(),
        ahead: None,
        cuts,
    };
    futures_util::stream::unfold(start, |mut st| async move {
        let want = st.pacer.next_size();
        let current = match st.ahead.take() {
            Some(h) => h,
            None => st.read_next(want)?,
        };
        let chunk = current
            .await
            .unwrap_or_else(|e| Err(join_err(blocking::JoinError::from(e))));
        match &chunk {
            Ok(bytes) => {
                // The few bytes up to a record boundary say nothing of the reader's pace: a
                // quick take of 16 bytes would look slow.
                if bytes.len() >= pool::MIN_CHUNK || st.cuts.is_none() {
                    st.pacer.handed(bytes.len());
                }
                if !st.pacer.slow() {
                    st.ahead = st.read_next(want);
                }
            }
            Err(_) => st.pos = st.end,
        }
        Some((chunk, st))
    })
}

fn walk(root: &Path) -> Result<Inventory, BlobError> {
    let mut inv = Inventory::default();
    let blobs = root.join(BLOBS);
    for a in read_dir_sorted(&blobs)? {
        let a_path = blobs.join(&a);
        if !is_real_dir(&a_path) {
            inv.strays.push(format!("{BLOBS}/{a}"));
            continue;
        }
        for b in read_dir_sorted(&a_path)? {
            let b_path = a_path.join(&b);
            if !is_real_dir(&b_path) {
                inv.strays.push(format!("{BLOBS}/{a}/{b}"));
                continue;
            }
            for name in read_dir_sorted(&b_path)? {
                let rel = format!("{a}/{b}/{name}");
                let meta =
                    std::fs::symlink_metadata(b_path.join(&name)).map_err(BlobError::from_io)?;
                match BlobKey::parse(&rel) {
                    Some(key) if meta.is_file() => inv.blobs.push(StoredBlob {
                        key,
                        len: meta.len(),
                        changed_at: changed_at(&meta),
                    }),
                    _ => inv.strays.push(format!("{BLOBS}/{rel}")),
                }
            }
        }
    }
    Ok(inv)
}

/// The inode change time (a rename into place updates it; the data's mtime it keeps).
fn changed_at(meta: &std::fs::Metadata) -> std::time::SystemTime {
    use std::os::unix::fs::MetadataExt as _;
    let secs = u64::try_from(meta.ctime()).unwrap_or(0);
    let nanos = u32::try_from(meta.ctime_nsec()).unwrap_or(0);
    std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos)
}

fn is_real_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

fn read_dir_sorted(p: &Path) -> Result<Vec<String>, BlobError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(p).map_err(BlobError::from_io)? {
        let entry = entry.map_err(BlobError::from_io)?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// A blob being written to `tmp/`.
struct FsWriter {
    fs: LocalFs,
    /// Where the blob goes at commit.
    key: BlobKey,
    /// Its temp file's name in `tmp/`; empty for an appending writer.
    name: String,
    /// For an appending writer ([`LocalFs::append`]): where the blob was durable when it
    /// started, and whether it created the file.
    append: Option<Appending>,
    file: Arc<File>,
    buf: BytesMut,
    /// The previous buffer's write, running while the next buffer fills.
    inflight: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Bytes handed to the file so far.
    written: u64,
    done: bool,
}

/// An appending writer's starting point.
struct Appending {
    at: u64,
    created: bool,
}

/// Ask the kernel to start writing a just-written range to disk now (`POSIX_FADV_DONTNEED`
/// starts asynchronous writeback of dirty pages on Linux), so the fsync before the 201 waits
/// for the tail of a large upload, not for all of it: disk writes overlap the network.
fn start_writeback(file: &File, offset: u64, len: u64) {
    if let Some(len) = std::num::NonZeroU64::new(len) {
        // Only a hint: failure changes timing, never durability (the fsync still comes).
        let _ = rustix::fs::fadvise(file, offset, Some(len), rustix::fs::Advice::DontNeed);
    }
}

impl FsWriter {
    async fn settle(&mut self) -> Result<(), BlobError> {
        if let Some(task) = self.inflight.take() {
            task.await
                .map_err(|e| BlobError::Io(std::io::Error::other(e)))?
                .map_err(BlobError::from_io)?;
        }
        Ok(())
    }

    /// Hand the buffer to the file; unless `last`, also start its writeback early (the last
    /// one is about to be fsynced anyway, and a small blob is all "last").
    async fn flush_buf(&mut self, last: bool) -> Result<(), BlobError> {
        self.settle().await?;
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        let file = self.file.clone();
        let at = self.written;
        self.written += chunk.len() as u64;
        self.inflight = Some(tokio::task::spawn_blocking(move || {
            (&*file).write_all(&chunk)?;
            if !last {
                start_writeback(&file, at, chunk.len() as u64);
            }
            Ok(())
        }));
        Ok(())
    }
}

impl BlobWriter for FsWriter {
    /// The temp file's name in `tmp/`, from the start (the file exists from `put` on).
    fn staging_id(&self) -> Option<String> {
        (!self.done && self.append.is_none()).then(|| self.name.clone())
    }

    fn write<'a>(&'a mut self, data: &'a [u8]) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            self.buf.extend_from_slice(data);
            if self.buf.len() >= WRITE_CHUNK {
                self.flush_buf(false).await?;
                self.buf.reserve(WRITE_CHUNK);
            }
            Ok(())
        })
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BlobError>> {
        Box::pin(async move {
            let key = self.key.clone();
            self.flush_buf(true).await?;
            self.settle().await?;
            let file = self.file.clone();
            let name = self.name.clone();
            let fs = self.fs.clone();
            if let Some(a) = &self.append {
                let created = a.created || a.at == 0;
                blocking::run(move || -> Result<(), BlobError> {
                    file.sync_data().map_err(BlobError::from_io)?;
                    if created {
                        // The new name survives a crash once its directory is synced.
                        rustix::fs::fsync(fs.shard(&key, false)?).map_err(io)?;
                    }
                    Ok(())
                })
                .await
                .map_err(join_err)??;
                self.done = true;
                return Ok(());
            }
            blocking::run(move || -> Result<(), BlobError> {
                // Data first, then the name: after a crash there is either no blob or a whole one.
                file.sync_all().map_err(BlobError::from_io)?;
                let dir = fs.shard(&key, true)?;
                let tmp_dir = &fs.dirs.tmp;
                match rustix::fs::renameat_with(
                    tmp_dir,
                    &*name,
                    &dir,
                    key.parts().2,
                    RenameFlags::NOREPLACE,
                ) {
                    Ok(()) => {}
                    // Filesystems without RENAME_NOREPLACE: the key is a fresh UUID anyway.
                    Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                        rustix::fs::renameat(tmp_dir, &*name, &dir, key.parts().2).map_err(io)?;
                    }
                    Err(e) => return Err(io(e)),
                }
                rustix::fs::fsync(&dir).map_err(io)
            })
            .await
            .map_err(join_err)??;
            self.done = true;
            Ok(())
        })
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        if let (false, Some(a)) = (self.done, &self.append) {
            // Aborted: only the bytes that were durable before stay (none of a new blob).
            let gone = if a.at == 0 {
                self.fs.shard(&self.key, false).and_then(|dir| {
                    rustix::fs::unlinkat(&dir, self.key.parts().2, AtFlags::empty()).map_err(io)
                })
            } else {
                rustix::fs::ftruncate(&*self.file, a.at).map_err(io)
            };
            if let Err(e) = gone {
                tracing::warn!(error = %e, "cannot cut an aborted append back");
            }
            return;
        }
        if !self.done {
            // Aborted (limit, bad type, disconnect, error): leave nothing behind. unlink is
            // quick and never blocks on data, so it is done right here.
            if let Err(e) = rustix::fs::unlinkat(&self.fs.dirs.tmp, &*self.name, AtFlags::empty())
                && e != rustix::io::Errno::NOENT
            {
                tracing::warn!(error = %e, "cannot remove an aborted upload's temp file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::BlobStore;
    use crate::ids::FileId;
    use futures_util::StreamExt;

    async fn collect(s: ByteStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = s;
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn write_commit_read_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(Arc::new(LocalFs::open(dir.path()).unwrap()));
        let key = BlobKey::for_file(FileId::new(), false);
        let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = store.put(&key).await.unwrap();
        for chunk in data.chunks(70_000) {
            w.write(chunk).await.unwrap();
        }
        w.commit().await.unwrap();
        assert_eq!(store.stat(&key).await.unwrap(), data.len() as u64);
        assert_eq!(
            collect(store.get_range(&key, 0, data.len() as u64).await.unwrap()).await,
            data
        );
        assert_eq!(
            collect(store.get_range(&key, 10, 5).await.unwrap()).await,
            &data[10..15]
        );
        // Past the end: the bytes that exist, then `Short`, never a silent short body.
        let short = match store.get_range(&key, data.len() as u64 - 3, 10).await {
            Err(e) => e,
            Ok(mut s) => loop {
                match s.next().await {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break e,
                    None => panic!("a range past the end ended silently"),
                }
            },
        };
        assert!(matches!(short, BlobError::Short));
        assert_eq!(std::fs::read_dir(dir.path().join(TMP)).unwrap().count(), 0);

        assert_eq!(store.list().await.unwrap().blobs.len(), 1);
        store.delete(&key).await.unwrap();
        assert!(matches!(store.stat(&key).await, Err(BlobError::NotFound)));
        assert!(matches!(store.delete(&key).await, Err(BlobError::NotFound)));
        assert!(store.list().await.unwrap().blobs.is_empty());
    }

    #[tokio::test]
    async fn appends_in_place_are_held_cut_back_and_linked() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(Arc::new(LocalFs::open(dir.path()).unwrap()));
        let key = BlobKey::for_file(FileId::new(), false);
        let path = dir.path().join(BLOBS).join(key.as_str());
        // Nothing durable yet: dropped, nothing stays.
        let mut w = store.append(&key, 0).await.unwrap().unwrap();
        w.write(&[1u8; 1000]).await.unwrap();
        drop(w);
        assert!(matches!(store.stat(&key).await, Err(BlobError::NotFound)));
        // One writer at a time.
        let mut w = store.append(&key, 0).await.unwrap().unwrap();
        w.write(&[1u8; 100_000]).await.unwrap();
        assert!(matches!(store.append(&key, 0).await, Err(BlobError::Busy)));
        w.commit().await.unwrap();
        assert_eq!(store.stat(&key).await.unwrap(), 100_000);
        // What a crashed writer left after the durable bytes is cut off before appending.
        {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(&[9u8; 5000]).unwrap();
        }
        let mut w = store.append(&key, 100_000).await.unwrap().unwrap();
        w.write(&[2u8; 10]).await.unwrap();
        w.commit().await.unwrap();
        let mut want = vec![1u8; 100_000];
        want.extend_from_slice(&[2u8; 10]);
        assert_eq!(
            collect(store.get_range(&key, 0, 100_010).await.unwrap()).await,
            want
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 100_010);
        // Durable bytes that are missing are not papered over.
        assert!(matches!(
            store.append(&key, 200_000).await,
            Err(BlobError::Short)
        ));
        // Dropped after some bytes: cut back to where it started.
        let mut w = store.append(&key, 100_010).await.unwrap().unwrap();
        w.write(&[3u8; 10]).await.unwrap();
        drop(w);
        assert_eq!(store.stat(&key).await.unwrap(), 100_010);
        // A second name: no copy, and either name can go.
        let file = BlobKey::for_file(FileId::new(), false);
        store.link(&key, &file).await.unwrap();
        assert!(store.link(&key, &file).await.is_err(), "never replaces");
        store.delete(&key).await.unwrap();
        assert_eq!(
            collect(store.get_range(&file, 0, 100_010).await.unwrap()).await,
            want
        );
        assert!(store.can_link());
    }

    #[tokio::test]
    async fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(Arc::new(LocalFs::open(dir.path()).unwrap()));
        let mut w = store
            .put(&BlobKey::for_file(FileId::new(), false))
            .await
            .unwrap();
        w.write(&[1u8; 1_000_000]).await.unwrap();
        drop(w);
        tokio::task::yield_now().await;
        assert_eq!(std::fs::read_dir(dir.path().join(TMP)).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn staged_files_can_be_aborted_by_their_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(Arc::new(LocalFs::open(dir.path()).unwrap()));
        let key = BlobKey::for_file(FileId::new(), false);
        let mut w = store.put(&key).await.unwrap();
        w.write(b"staged").await.unwrap();
        let id = w.staging_id().unwrap();
        // A crash: the writer's Drop never runs.
        std::mem::forget(w);
        assert_eq!(std::fs::read_dir(dir.path().join(TMP)).unwrap().count(), 1);
        store.abort_staged(&key, &id).await.unwrap();
        assert_eq!(std::fs::read_dir(dir.path().join(TMP)).unwrap().count(), 0);
        // Again, and for ids that were never staged: harmless.
        store.abort_staged(&key, &id).await.unwrap();
        // Anything but a temp name we make is refused, never resolved as a path.
        for bad in ["../blobs", "x.part", "", "../tmp/0.part"] {
            assert!(matches!(
                store.abort_staged(&key, bad).await,
                Err(BlobError::Unsafe)
            ));
        }
    }

    #[tokio::test]
    async fn symlinks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fs = LocalFs::open(dir.path()).unwrap();
        let store = BlobStore::new(Arc::new(fs.clone()));
        let key = BlobKey::for_file(FileId::new(), false);
        let (a, b, name) = key.parts();
        let shard = fs.root().join(BLOBS).join(a).join(b);
        std::fs::create_dir_all(&shard).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"outside").unwrap();
        std::os::unix::fs::symlink(&secret, shard.join(name)).unwrap();
        assert!(matches!(
            store.get_range(&key, 0, 3).await,
            Err(BlobError::Unsafe)
        ));

        // A symlinked shard directory is refused too.
        let key2 = BlobKey::for_file(FileId::new(), false);
        let (a2, _, _) = key2.parts();
        if a2 != a {
            let level = fs.root().join(BLOBS).join(a2);
            std::fs::remove_dir(&level).unwrap();
            std::os::unix::fs::symlink(dir.path(), &level).unwrap();
            assert!(store.get_range(&key2, 0, 3).await.is_err());
        }
    }
}
