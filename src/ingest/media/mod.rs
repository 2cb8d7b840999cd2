//! Image safety without decoding: dimensions read from headers (image bombs refused before a
//! pixel is decoded) and metadata removed by segment surgery, as the upload streams.
//!
//! One walker per format (`jpeg`, `png`, `webp`, `gif`), each a state machine fed chunks cut
//! anywhere, emitting the bytes to store as it goes (zero-copy slices of the input where
//! bytes are kept). Nothing is re-encoded: entropy-coded JPEG data, PNG `IDAT` and WebP
//! `VP8`/`VP8L` payloads leave byte for byte as they came.
//!
//! Invariant: memory per walker is bounded by a constant whatever the input: a header buffer
//! of at most [`HEADER_MAX`] bytes (a JPEG segment's 16-bit length is the largest header ever
//! read whole), plus, for a WebP with metadata only, the look-ahead of `webp` (at most
//! [`webp::HOLD_BYTES`]). Skipped or kept bytes are never buffered. Whatever a walker cannot
//! read (a truncated or malformed header, no dimensions) is refused, never passed on
//! half-checked.
//!
//! Why not `img-parts` (or `image`): both parse a whole file in memory (`img-parts` takes one
//! `Bytes` of the complete image); a 100 MiB upload would cost 100 MiB per request, and the
//! pipeline streams in batches on the blocking pool. The formats' segment layers are simple
//! (a length-prefixed list each); the walkers here are a few hundred lines and fuzzed
//! (`fuzz/fuzz_targets/media_*.rs`).

pub(crate) mod exif;
pub(crate) mod gif;
pub(crate) mod io;
pub(crate) mod jpeg;
pub(crate) mod png;
pub mod webp;

use bytes::Bytes;

use io::{Input, Out};

/// The largest header a walker buffers whole: a JPEG segment (16-bit length) or an EXIF
/// prefix (`exif::PREFIX`), plus its marker.
pub const HEADER_MAX: usize = 64 * 1024 + 4;

/// The image formats whose headers are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JPEG (JFIF, EXIF).
    Jpeg,
    /// PNG (and APNG).
    Png,
    /// GIF 87a/89a: dimensions only, stored unchanged.
    Gif,
    /// WebP (simple lossy, simple lossless, extended).
    Webp,
}

impl Format {
    /// The format a proven content type names (the type `policy` decided), if it is an image
    /// with readable headers.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type {
            "image/jpeg" => Some(Self::Jpeg),
            "image/png" | "image/apng" => Some(Self::Png),
            "image/gif" => Some(Self::Gif),
            "image/webp" => Some(Self::Webp),
            _ => None,
        }
    }

    /// Whether `uploads.strip_metadata` rewrites this format (GIF is only measured).
    pub fn strippable(self) -> bool {
        self != Self::Gif
    }
}

/// What to enforce.
#[derive(Debug, Clone, Copy)]
pub struct MediaOptions {
    /// `uploads.max_image_pixels`: the most pixels any declared frame or canvas may hold.
    pub max_pixels: u64,
    /// `uploads.strip_metadata`: remove metadata (otherwise the bytes pass unchanged).
    pub strip: bool,
}

/// An image's declared size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dimensions {
    /// Pixels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
}

/// Why an image was refused (both 415s).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The header declares more pixels than allowed: an image bomb, refused undecoded.
    #[error("the image declares {width}x{height} pixels, more than the {limit} allowed")]
    TooManyPixels {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// `uploads.max_image_pixels`.
        limit: u64,
    },
    /// No dimensions could be read, or the structure around them is malformed or cut short.
    #[error("the image cannot be read: {0}")]
    Unreadable(&'static str),
}

impl MediaError {
    /// A short reason for the audit trail.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooManyPixels { .. } => "image_too_large",
            Self::Unreadable(_) => "image_unreadable",
        }
    }
}

/// Check a declared size against the limit; zero sides are unreadable.
pub(crate) fn check(width: u32, height: u32, limit: u64) -> Result<Dimensions, MediaError> {
    if width == 0 || height == 0 {
        return Err(MediaError::Unreadable(
            "the image declares a zero dimension",
        ));
    }
    if u64::from(width) * u64::from(height) > limit {
        return Err(MediaError::TooManyPixels {
            width,
            height,
            limit,
        });
    }
    Ok(Dimensions { width, height })
}

/// One upload's image walker: feed it the received chunks in order, store what it emits.
/// Runs on the blocking pool beside the hasher (`Pipeline::update`), one chunk at a time.
pub struct MediaWalker {
    inner: Inner,
    strip: bool,
}

enum Inner {
    Jpeg(jpeg::Jpeg),
    Png(png::Png),
    Gif(gif::Gif),
    Webp(webp::Webp),
}

impl MediaWalker {
    /// A walker for `format`.
    pub fn new(format: Format, opts: MediaOptions) -> Self {
        Self::with_webp_hold(format, opts, webp::HOLD_BYTES)
    }

    /// [`MediaWalker::new`] with another WebP look-ahead (tests and fuzzing reach the
    /// in-place path with a small one).
    #[doc(hidden)]
    pub fn with_webp_hold(format: Format, opts: MediaOptions, hold: usize) -> Self {
        let strip = opts.strip && format.strippable();
        let inner = match format {
            Format::Jpeg => Inner::Jpeg(jpeg::Jpeg::new(opts.max_pixels, strip)),
            Format::Png => Inner::Png(png::Png::new(opts.max_pixels, strip)),
            Format::Gif => Inner::Gif(gif::Gif::new(opts.max_pixels)),
            Format::Webp => Inner::Webp(webp::Webp::new(opts.max_pixels, strip, hold)),
        };
        Self { inner, strip }
    }

    /// Whether it may store other bytes than it receives (stripping metadata).
    pub fn strips(&self) -> bool {
        self.strip
    }

    /// Take the next received chunk; push the bytes to store, in order, onto `out`. Without
    /// stripping that is `chunk` itself.
    pub fn update(&mut self, chunk: Bytes, out: &mut Vec<Bytes>) -> Result<(), MediaError> {
        if !self.strip {
            out.push(chunk.clone());
        }
        let mut input = Input::new(chunk);
        let mut out = Out::new(out, self.strip);
        match &mut self.inner {
            Inner::Jpeg(w) => w.update(&mut input, &mut out),
            Inner::Png(w) => w.update(&mut input, &mut out),
            Inner::Gif(w) => w.update(&mut input),
            Inner::Webp(w) => w.update(&mut input, &mut out),
        }
    }

    /// The end of the stream: the last bytes to store, and the image's dimensions (the
    /// canvas, for animations).
    pub fn finish(self, out: &mut Vec<Bytes>) -> Result<Dimensions, MediaError> {
        let mut out = Out::new(out, self.strip);
        match self.inner {
            Inner::Jpeg(w) => w.finish(),
            Inner::Png(w) => w.finish(),
            Inner::Gif(w) => w.finish(),
            Inner::Webp(w) => w.finish(&mut out),
        }
    }
}

/// Run a whole image through a walker cut into `cuts`-sized chunks (tests, fuzzing,
/// benchmarks): the stored bytes and the dimensions.
#[doc(hidden)]
pub fn run(
    format: Format,
    opts: MediaOptions,
    hold: usize,
    data: &[u8],
    cuts: &mut dyn Iterator<Item = usize>,
) -> Result<(Vec<u8>, Dimensions), MediaError> {
    let mut w = MediaWalker::with_webp_hold(format, opts, hold);
    let mut pieces = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = cuts.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (a, b) = rest.split_at(n);
        w.update(Bytes::copy_from_slice(a), &mut pieces)?;
        rest = b;
    }
    let dims = w.finish(&mut pieces)?;
    Ok((pieces.concat(), dims))
}

#[cfg(test)]
mod tests;
