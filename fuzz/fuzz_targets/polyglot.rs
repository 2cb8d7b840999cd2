//! `coffer::ingest::polyglot`: the streaming check agrees with a plain reading of the rule
//! over the whole file (markers in the first or last 4 KiB, a ZIP end-of-central-directory
//! record that fits in the last 64 KiB + 22), however the stream is cut. Input:
//! `[cut x2][file...]`.
#![no_main]

use coffer::ingest::polyglot::{EDGE, Polyglot, PolyglotScan, TAIL};
use libfuzzer_sys::fuzz_target;

const MARKUP: &[&str] = &["<html", "<script", "<svg", "<?php", "<!doctype html"];

fn markup(window: &[u8]) -> Option<&'static str> {
    (0..window.len()).find_map(|i| {
        MARKUP
            .iter()
            .find(|m| window[i..].len() >= m.len() && window[i..i + m.len()].eq_ignore_ascii_case(m.as_bytes()))
            .copied()
    })
}

fn reference(data: &[u8]) -> Result<(), Polyglot> {
    if let Some(marker) = markup(&data[..data.len().min(EDGE)]) {
        return Err(Polyglot::Markup { marker, at: "start" });
    }
    if let Some(marker) = markup(&data[data.len().saturating_sub(EDGE)..]) {
        return Err(Polyglot::Markup { marker, at: "end" });
    }
    let tail = &data[data.len().saturating_sub(TAIL)..];
    let zip = (0..tail.len()).any(|i| {
        let after = tail.len() - i;
        tail[i..].starts_with(b"PK\x05\x06")
            && after >= 22
            && 22 + usize::from(u16::from_le_bytes([tail[i + 20], tail[i + 21]])) <= after
    });
    if zip { Err(Polyglot::Zip) } else { Ok(()) }
}

fuzz_target!(|input: &[u8]| {
    let Some((cuts, data)) = input.split_at_checked(2) else {
        return;
    };
    let cuts = [usize::from(cuts[0]) * 37 + 1, usize::from(cuts[1]) * 509 + 1];
    let mut scan = PolyglotScan::default();
    let mut rest = data;
    let mut i = 0;
    let streamed = loop {
        let n = cuts[i % 2].min(rest.len());
        i += 1;
        let (a, b) = rest.split_at(n);
        if let Err(e) = scan.update(a) {
            break Err(e);
        }
        rest = b;
        if rest.is_empty() {
            break scan.finish();
        }
    };
    assert_eq!(streamed, reference(data), "cut by {cuts:?}");
});
