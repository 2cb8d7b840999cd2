//! Content safety while an upload streams (API.md "Content safety"): the per-byte checks a
//! proven content type calls for ([`Checks`]: polyglot markers on the received bytes, then the
//! image walker that reads dimensions and strips metadata, on the blocking pool beside the
//! hasher) and the clamd session fed with the bytes to store ([`Scan`], on the async side
//! beside the blob writer), whose verdict comes before the blob is committed.
//!
//! Every upload path feeds the same `Sink`, so every path gets both: single-shot and
//! multipart now; a resumable (tus) or grant upload will feed its bodies into one staged
//! `Sink` the same way, keeping the scan session open across its requests.
//!
//! Invariant: fail closed. A scan that cannot finish (clamd unreachable, erroring, silent
//! past `scan.timeout_secs`, or the file past `scan.max_bytes`) refuses the upload unless the
//! configuration says to store it unscanned (`scan.fail_open`, `scan.skip_larger`), and then
//! the file says so (`scanned_at` null) and the audit trail records why. Memory is bounded by
//! the walkers' and the scanner's own bounds (a header, a frame), never by the file size.

use bytes::Bytes;

use super::IngestError;
use super::media::{Format, MediaOptions, MediaWalker};
use super::polyglot::PolyglotScan;
use super::scan::{Clamd, ScanSession, Verdict};
use crate::config::{ScanConfig, UploadsConfig};
use crate::ids::Timestamp;

/// The content-safety settings of the upload pipeline.
#[derive(Debug, Clone)]
pub(crate) struct Safety {
    /// clamd and what to do when it cannot give a verdict; `None`: uploads are not scanned.
    pub(crate) scanner: Option<Scanner>,
    /// Image limits and whether metadata is stripped.
    pub(crate) media: MediaOptions,
    /// `uploads.reject_polyglots`.
    pub(crate) reject_polyglots: bool,
}

/// The virus scanner and its failure policy.
#[derive(Debug, Clone)]
pub(crate) struct Scanner {
    /// The daemon (one connection per upload).
    pub(crate) clamd: Clamd,
    /// `scan.fail_open`: store unscanned when clamd cannot answer.
    pub(crate) fail_open: bool,
    /// `scan.skip_larger`: store unscanned what is larger than `max_bytes`.
    pub(crate) skip_larger: bool,
    /// `scan.max_bytes`.
    pub(crate) max_bytes: u64,
}

impl Safety {
    /// The settings the configuration names.
    pub(crate) fn new(scan: &ScanConfig, uploads: &UploadsConfig) -> Self {
        let scanner = scan.clamd_addr().map(|addr| Scanner {
            clamd: Clamd::new(
                addr,
                std::time::Duration::from_secs(scan.timeout_secs),
                scan.max_bytes,
            ),
            fail_open: scan.fail_open,
            skip_larger: scan.skip_larger,
            max_bytes: scan.max_bytes,
        });
        Self {
            scanner,
            media: MediaOptions {
                max_pixels: uploads.max_image_pixels,
                strip: uploads.strip_metadata,
            },
            reject_polyglots: uploads.reject_polyglots,
        }
    }

    /// The most bytes an upload may have to be stored at all when a scanner is configured
    /// without `scan.skip_larger` (`scan.max_bytes`); `None` when size does not matter here.
    pub(crate) fn scan_limit(&self) -> Option<u64> {
        self.scanner
            .as_ref()
            .filter(|s| !s.skip_larger)
            .map(|s| s.max_bytes)
    }

    /// Whether clamd answers `PING` (`/readyz`); `Ok` when no scanner is configured.
    pub(crate) async fn ready(&self) -> Result<(), String> {
        match &self.scanner {
            Some(s) => s.clamd.ping().await,
            None => Ok(()),
        }
    }
}

/// The per-byte checks of one upload, chosen by its proven content type. Runs on the
/// blocking pool, one chunk at a time.
pub(crate) struct Checks {
    /// Images and PDFs, with `uploads.reject_polyglots` (text types are exempt: they are
    /// served as `text/plain` with `nosniff` and never rendered).
    polyglot: Option<PolyglotScan>,
    /// JPEG, PNG, GIF, WebP.
    media: Option<MediaWalker>,
}

impl Checks {
    /// No checks (what is left once [`Checks::finish`] took them).
    pub(crate) fn none() -> Self {
        Self {
            polyglot: None,
            media: None,
        }
    }

    /// The checks `content_type` calls for.
    pub(crate) fn for_type(safety: &Safety, content_type: &str) -> Self {
        let image = content_type.starts_with("image/");
        let polyglot = (safety.reject_polyglots && (image || content_type == "application/pdf"))
            .then(PolyglotScan::default);
        let media =
            Format::from_content_type(content_type).map(|f| MediaWalker::new(f, safety.media));
        Self { polyglot, media }
    }

    /// Whether the bytes stored may differ from the bytes received (metadata stripping is on
    /// for this format).
    pub(crate) fn may_rewrite(&self) -> bool {
        self.media.as_ref().is_some_and(MediaWalker::strips)
    }

    /// Check a received chunk; push the bytes to store onto `out` (the chunk itself unless
    /// metadata is stripped). The polyglot check sees the bytes as received: a ZIP or markup
    /// tail that stripping would drop still marks the upload as crafted.
    pub(crate) fn update(&mut self, chunk: Bytes, out: &mut Vec<Bytes>) -> Result<(), IngestError> {
        if let Some(p) = &mut self.polyglot {
            p.update(&chunk)?;
        }
        match &mut self.media {
            Some(m) => m.update(chunk, out)?,
            None => out.push(chunk),
        }
        Ok(())
    }

    /// The end of the stream: the last checks, and the last bytes to store.
    pub(crate) fn finish(self, out: &mut Vec<Bytes>) -> Result<(), IngestError> {
        if let Some(p) = self.polyglot {
            p.finish()?;
        }
        if let Some(m) = self.media {
            m.finish(out)?;
        }
        Ok(())
    }
}

/// How an upload stands with the virus scanner once its bytes are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scanned {
    /// No scanner is configured.
    NotConfigured,
    /// clamd found the stored bytes clean at this time.
    Clean(Timestamp),
    /// Stored unscanned as configured; why (`too_large`, `scanner_unavailable`).
    Unscanned(&'static str),
}

impl Scanned {
    /// The file object's `scanned_at`.
    pub(crate) fn scanned_at(self) -> Option<Timestamp> {
        match self {
            Self::Clean(t) => Some(t),
            Self::NotConfigured | Self::Unscanned(_) => None,
        }
    }
}

/// The clamd session of one upload, fed with the bytes to store, in order.
pub(crate) struct Scan {
    state: ScanState,
}

enum ScanState {
    Off,
    Scanning(ScanSession, Scanner),
    Unscanned(&'static str),
}

impl Scan {
    /// Open the session (before anything is stored): a clamd that cannot be reached refuses
    /// the upload here, before a blob exists, unless `scan.fail_open`.
    pub(crate) async fn start(safety: &Safety) -> Result<Self, IngestError> {
        let Some(scanner) = &safety.scanner else {
            return Ok(Self {
                state: ScanState::Off,
            });
        };
        let session = scanner.clamd.session().await;
        let state = match session.settled().cloned() {
            Some(v) => ScanState::Unscanned(give_up(scanner, v)?),
            None => ScanState::Scanning(session, scanner.clone()),
        };
        Ok(Self { state })
    }

    /// Send the next bytes to clamd. Waits while clamd reads (back-pressure on the upload).
    pub(crate) async fn feed(&mut self, pieces: &[Bytes]) -> Result<(), IngestError> {
        let ScanState::Scanning(session, scanner) = &mut self.state else {
            return Ok(());
        };
        for piece in pieces {
            if let Err(v) = session.feed(piece).await {
                let why = give_up(scanner, v)?;
                self.state = ScanState::Unscanned(why);
                return Ok(());
            }
        }
        Ok(())
    }

    /// Whether the bytes fed are to be handed to [`Scan::feed`] at all.
    pub(crate) fn wants_bytes(&self) -> bool {
        matches!(self.state, ScanState::Scanning(..))
    }

    /// End the stream and wait (at most `scan.timeout_secs`) for the verdict.
    pub(crate) async fn verdict(self) -> Result<Scanned, IngestError> {
        match self.state {
            ScanState::Off => Ok(Scanned::NotConfigured),
            ScanState::Unscanned(why) => Ok(Scanned::Unscanned(why)),
            ScanState::Scanning(session, scanner) => match session.verdict().await {
                Verdict::Clean => Ok(Scanned::Clean(Timestamp::now())),
                v => Ok(Scanned::Unscanned(give_up(&scanner, v)?)),
            },
        }
    }
}

/// A verdict other than clean: the error that refuses the upload, or (as configured) why it
/// is stored unscanned.
fn give_up(scanner: &Scanner, v: Verdict) -> Result<&'static str, IngestError> {
    match v {
        Verdict::Infected(signature) => Err(IngestError::Infected(signature)),
        Verdict::TooLarge | Verdict::TooLargeForClamd if scanner.skip_larger => Ok("too_large"),
        Verdict::TooLarge => Err(IngestError::TooLargeToScan {
            limit: scanner.max_bytes,
        }),
        Verdict::TooLargeForClamd => {
            // Not the limit the client was told: clamd's own is lower than coffer's.
            tracing::warn!(
                scan.max_bytes = scanner.max_bytes,
                "clamd refused a stream as longer than its StreamMaxLength, which is below \
                 scan.max_bytes: raise it, or lower scan.max_bytes to match"
            );
            Err(IngestError::TooLargeToScan { limit: 0 })
        }
        Verdict::Unavailable(why) if scanner.fail_open => {
            tracing::warn!(error = %why, "clamd gave no verdict; storing unscanned (scan.fail_open)");
            Ok("scanner_unavailable")
        }
        Verdict::Unavailable(why) => Err(IngestError::ScanUnavailable(why)),
        // Callers handle a clean verdict before asking; were one to get here, fail closed.
        Verdict::Clean => Err(IngestError::ScanUnavailable(
            "a clean verdict where none was due".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::scan::ClamdAddr;

    fn scanner(skip_larger: bool) -> Scanner {
        let addr = ClamdAddr::parse("tcp://127.0.0.1:9").unwrap();
        Scanner {
            clamd: Clamd::new(addr, std::time::Duration::from_secs(1), 1000),
            fail_open: false,
            skip_larger,
            max_bytes: 1000,
        }
    }

    #[test]
    fn too_large_names_the_limit_only_when_it_is_coffers() {
        let strict = scanner(false);
        assert!(matches!(
            give_up(&strict, Verdict::TooLarge),
            Err(IngestError::TooLargeToScan { limit: 1000 })
        ));
        // clamd's own, lower limit: not one the client was told about.
        assert!(matches!(
            give_up(&strict, Verdict::TooLargeForClamd),
            Err(IngestError::TooLargeToScan { limit: 0 })
        ));
        let lenient = scanner(true);
        for v in [Verdict::TooLarge, Verdict::TooLargeForClamd] {
            assert_eq!(give_up(&lenient, v).unwrap(), "too_large");
        }
    }
}
