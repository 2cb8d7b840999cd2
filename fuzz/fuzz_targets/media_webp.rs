//! `coffer::ingest::media`'s Webp walker: see media_common.rs for what is checked.
#![no_main]

use coffer::ingest::media::Format;
use libfuzzer_sys::fuzz_target;

#[path = "media_common.rs"]
mod common;

fuzz_target!(|input: &[u8]| common::check(Format::Webp, input));
