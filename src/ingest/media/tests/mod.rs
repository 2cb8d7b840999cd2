//! The walkers on real images: encoded here with the `image` crate, then given GPS EXIF (and a
//! thumbnail), XMP, IPTC, comments, text chunks and trailing data by hand. Stripped, they must
//! come out exactly as the clean encoding plus the segments that are meant to stay (so every
//! entropy-coded, IDAT and VP8L byte is identical), decode to the same pixels, and show
//! `exiftool` no GPS, EXIF or XMP tag besides Orientation. Bombs are refused undecoded, and no
//! way of cutting the stream changes any answer.

use std::process::Command;

use image::{ExtendedColorType, ImageFormat};
use proptest::prelude::*;

use super::*;

mod samples;
use samples::*;

const LIMIT: u64 = 100_000_000;
const STRIP: MediaOptions = MediaOptions {
    max_pixels: LIMIT,
    strip: true,
};
const MEASURE: MediaOptions = MediaOptions {
    max_pixels: LIMIT,
    strip: false,
};

fn walk(
    format: Format,
    opts: MediaOptions,
    data: &[u8],
) -> Result<(Vec<u8>, Dimensions), MediaError> {
    run(
        format,
        opts,
        webp::HOLD_BYTES,
        data,
        &mut std::iter::empty(),
    )
}

fn strip(format: Format, data: &[u8]) -> Vec<u8> {
    walk(format, STRIP, data).unwrap().0
}

fn decode(format: ImageFormat, bytes: &[u8]) -> image::RgbaImage {
    image::load_from_memory_with_format(bytes, format)
        .unwrap_or_else(|e| panic!("{format:?} does not decode: {e}"))
        .to_rgba8()
}

// ---- Stripping ---------------------------------------------------------------------------

#[test]
fn jpeg_loses_its_metadata_and_nothing_else() {
    let (dirty, expected, clean) = phone_jpeg();
    let (out, dims) = walk(Format::Jpeg, STRIP, &dirty).unwrap();
    assert_eq!(
        dims,
        Dimensions {
            width: 96,
            height: 64
        }
    );
    assert_eq!(out.len(), expected.len());
    assert!(
        out == expected,
        "stripped JPEG differs from the expected bytes"
    );
    // The entropy-coded data (first SOS to EOI) is the encoder's, byte for byte.
    let sos = |j: &[u8]| j.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let entropy = |j: &[u8]| j[sos(j)..j.len()].to_vec();
    assert_eq!(entropy(&out), entropy(&clean));
    assert_eq!(
        decode(ImageFormat::Jpeg, &out),
        decode(ImageFormat::Jpeg, &clean)
    );
    // Measuring only: the stored bytes are the received ones.
    assert_eq!(walk(Format::Jpeg, MEASURE, &dirty).unwrap().0, dirty);
    // Idempotent.
    assert_eq!(strip(Format::Jpeg, &out), out);
}

#[test]
fn jpeg_orientation_1_or_none_leaves_no_exif_at_all() {
    let (dirty, _, _) = phone_jpeg();
    let six = with_prefix(b"Exif\0\0", &exif_tiff(6));
    let one = with_prefix(b"Exif\0\0", &exif_tiff(1));
    let at = dirty.windows(six.len()).position(|w| w == six).unwrap();
    let mut upright = dirty.clone();
    upright[at..at + six.len()].copy_from_slice(&one);
    let out = strip(Format::Jpeg, &upright);
    assert!(!out.windows(4).any(|w| w == b"Exif"));
}

#[test]
fn png_loses_its_metadata_and_nothing_else() {
    let (dirty, expected, clean) = dirty_png();
    let (out, dims) = walk(Format::Png, STRIP, &dirty).unwrap();
    assert_eq!(
        dims,
        Dimensions {
            width: 80,
            height: 60
        }
    );
    assert!(
        out == expected,
        "stripped PNG differs from the expected bytes"
    );
    assert_eq!(
        decode(ImageFormat::Png, &out),
        decode(ImageFormat::Png, &clean)
    );
    assert_eq!(walk(Format::Png, MEASURE, &dirty).unwrap().0, dirty);
    assert_eq!(strip(Format::Png, &out), out);
}

#[test]
fn webp_loses_its_metadata_and_nothing_else() {
    let (dirty, expected, clean) = dirty_webp();
    let (out, dims) = walk(Format::Webp, STRIP, &dirty).unwrap();
    assert_eq!(
        dims,
        Dimensions {
            width: 70,
            height: 50
        }
    );
    assert!(
        out == expected,
        "stripped WebP differs from the expected bytes"
    );
    assert_eq!(
        decode(ImageFormat::WebP, &out),
        decode(ImageFormat::WebP, &clean)
    );
    assert_eq!(walk(Format::Webp, MEASURE, &dirty).unwrap().0, dirty);
    assert_eq!(strip(Format::Webp, &out), out);
}

#[test]
fn webp_past_the_look_ahead_is_zeroed_in_place_and_still_decodes() {
    let (dirty, expected, clean) = dirty_webp();
    for hold in [0, 100, 2_000] {
        let (out, _) = run(
            Format::Webp,
            STRIP,
            hold,
            &dirty,
            &mut [7usize, 1000].into_iter().cycle(),
        )
        .unwrap();
        // Same RIFF size as received; the image chunks as expected, then JUNK where the
        // metadata was.
        let riff_end = 8 + u32::from_le_bytes(dirty[4..8].try_into().unwrap()) as usize;
        assert_eq!(out.len(), riff_end, "hold {hold}");
        assert_eq!(&out[..8], &dirty[..8]);
        assert_eq!(&out[8..expected.len()], &expected[8..]);
        let rest = &out[expected.len()..];
        let mut at = 0;
        while at < rest.len() {
            assert_eq!(&rest[at..at + 4], b"JUNK");
            let n = u32::from_le_bytes(rest[at + 4..at + 8].try_into().unwrap()) as usize;
            assert!(rest[at + 8..at + 8 + n].iter().all(|b| *b == 0));
            at += 8 + n;
        }
        assert!(!out.windows(6).any(|w| w == b"Secret"));
        assert_eq!(
            decode(ImageFormat::WebP, &out),
            decode(ImageFormat::WebP, &clean)
        );
    }
}

/// Found by the fuzzer: a stream ending exactly after the header of a chunk with nothing to
/// read first (an empty ANIM) ended the walk mid-chunk, so stripping was not idempotent.
#[test]
fn webp_may_end_right_after_an_empty_chunk() {
    let (_, expected, _) = dirty_webp();
    let data = riff(&[expected[12..].to_vec(), riff_chunk(b"ANIM", b"")]);
    assert!(strip(Format::Webp, &data) == data);
}

#[test]
fn gif_is_measured_and_stored_unchanged() {
    let img = image::RgbaImage::from_fn(30, 20, |x, y| {
        image::Rgba([x as u8 * 8, y as u8 * 12, 0, 255])
    });
    let mut bytes = Vec::new();
    image::codecs::gif::GifEncoder::new(&mut bytes)
        .encode(img.as_raw(), 30, 20, ExtendedColorType::Rgba8)
        .unwrap();
    let (out, dims) = walk(Format::Gif, STRIP, &bytes).unwrap();
    assert_eq!(
        (out, dims),
        (
            bytes,
            Dimensions {
                width: 30,
                height: 20
            }
        )
    );
    let g = gif(10, 10, &[(4, 4), (10, 10)]);
    assert_eq!(
        walk(Format::Gif, STRIP, &g).unwrap().1,
        Dimensions {
            width: 10,
            height: 10
        }
    );
}

// ---- Bombs and unreadable headers ----------------------------------------------------------

fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    [
        &b"\x89PNG\r\n\x1a\n"[..],
        &png_chunk(b"IHDR", &ihdr),
        &png_chunk(b"IDAT", &zlib_stored(&[0; 5_000])),
        &png_chunk(b"IEND", b""),
    ]
    .concat()
}

#[test]
fn bombs_are_refused_from_their_headers() {
    let too_many = |r: Result<(Vec<u8>, Dimensions), MediaError>| {
        matches!(r, Err(MediaError::TooManyPixels { .. }))
    };
    // A 5 KB PNG declaring 100,000 x 100,000: refused, whatever the mode.
    let bomb = png_declaring(100_000, 100_000);
    assert!(bomb.len() < 5_200);
    assert!(too_many(walk(Format::Png, STRIP, &bomb)));
    assert!(too_many(walk(Format::Png, MEASURE, &bomb)));
    assert!(walk(Format::Png, STRIP, &png_declaring(10_000, 10_000)).is_ok());
    assert!(too_many(walk(
        Format::Png,
        STRIP,
        &png_declaring(10_000, 10_001)
    )));
    // JPEG: a SOF0 of 65,535 x 65,535 after a clean file's tables.
    let (dirty, _, _) = phone_jpeg();
    let sof = dirty.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    let mut jbomb = dirty.clone();
    jbomb[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    assert!(too_many(walk(Format::Jpeg, MEASURE, &jbomb)));
    // ... or with a height left to a DNL marker: unreadable.
    jbomb[sof + 5..sof + 7].copy_from_slice(&[0, 0]);
    assert_eq!(
        walk(Format::Jpeg, STRIP, &jbomb).unwrap_err().reason(),
        "image_unreadable"
    );
    // GIF: a small screen announcing a huge frame.
    assert!(too_many(walk(
        Format::Gif,
        STRIP,
        &gif(10, 10, &[(10, 10), (65_535, 65_535)])
    )));
    assert!(too_many(walk(
        Format::Gif,
        STRIP,
        &gif(65_535, 2_000, &[(1, 1)])
    )));
    // WebP: a VP8X canvas of 2^24 x 2^24, a VP8L of 16,384 x 16,384, a VP8 of 16,383 x 16,383.
    let vp8x = riff(&[riff_chunk(
        b"VP8X",
        &[0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
    )]);
    assert!(too_many(walk(Format::Webp, STRIP, &vp8x)));
    let vp8l = riff(&[riff_chunk(b"VP8L", &[0x2f, 0xFF, 0xFF, 0xFF, 0x0F, 0, 0])]);
    assert!(too_many(walk(Format::Webp, STRIP, &vp8l)));
    let vp8 = riff(&[riff_chunk(
        b"VP8 ",
        &[0x10, 0, 0, 0x9d, 0x01, 0x2a, 0xFF, 0x3F, 0xFF, 0x3F],
    )]);
    assert!(too_many(walk(Format::Webp, MEASURE, &vp8)));
    let small_vp8 = riff(&[riff_chunk(
        b"VP8 ",
        &[0x10, 0, 0, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xF0, 0x00],
    )]);
    assert_eq!(
        walk(Format::Webp, MEASURE, &small_vp8).unwrap().1,
        Dimensions {
            width: 320,
            height: 240
        }
    );
}

#[test]
fn unreadable_or_cut_short_images_are_refused() {
    let (jpeg, _, _) = phone_jpeg();
    let (png, _, _) = dirty_png();
    let (webp, _, _) = dirty_webp();
    for (format, data) in [
        (Format::Jpeg, &jpeg),
        (Format::Png, &png),
        (Format::Webp, &webp),
    ] {
        assert!(walk(format, STRIP, b"").is_err());
        assert!(walk(format, STRIP, b"GIF89a").is_err());
        // Cut inside the image data: stripping needs the whole structure.
        let cut = &data[..data.len() - 100];
        assert_eq!(
            walk(format, STRIP, cut).unwrap_err(),
            MediaError::Unreadable(match format {
                Format::Jpeg => "the JPEG stream is cut short",
                Format::Png => "the PNG stream is cut short",
                _ => "the WebP stream is cut short",
            })
        );
    }
    // Cut before the dimensions, even when only measuring.
    assert!(walk(Format::Png, MEASURE, &png[..20]).is_err());
    assert!(walk(Format::Jpeg, MEASURE, &jpeg[..200]).is_err());
    assert!(walk(Format::Gif, MEASURE, &gif(5, 5, &[])).is_err());
}

// ---- exiftool on the stored bytes -----------------------------------------------------------

/// exiftool's tags for `bytes` (`-G` group:name keys), or None when it is not installed.
fn exiftool(bytes: &[u8], ext: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("image.{ext}"));
    std::fs::write(&path, bytes).unwrap();
    let out = match Command::new("exiftool")
        .args(["-json", "-G", "-a", "-u", "-ee"])
        .arg(&path)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // CI installs it and sets this: there a missing exiftool is a failure.
            assert!(
                std::env::var("COFFER_TEST_REQUIRE_EXIFTOOL").as_deref() != Ok("1"),
                "COFFER_TEST_REQUIRE_EXIFTOOL=1 but exiftool is not installed"
            );
            return None;
        }
        Err(e) => panic!("exiftool: {e}"),
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "exiftool output: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    v.as_array()
        .and_then(|a| a.first())
        .and_then(|o| o.as_object())
        .cloned()
}

#[test]
fn exiftool_finds_no_gps_exif_or_xmp_tag_in_stored_images() {
    let samples = [
        (phone_jpeg().0, Format::Jpeg, "jpg", true),
        (dirty_png().0, Format::Png, "png", true),
        (dirty_webp().0, Format::Webp, "webp", false),
    ];
    for (dirty, format, ext, keeps_orientation) in samples {
        let Some(before) = exiftool(&dirty, ext) else {
            eprintln!("skipped: exiftool not installed (Debian libimage-exiftool-perl)");
            return;
        };
        // The test images do carry what must go.
        for needle in ["GPSLatitude", "Make", "Creator"] {
            assert!(
                before.keys().any(|k| k.contains(needle)),
                "{ext} sample lacks {needle}: {before:?}"
            );
        }
        let after = exiftool(&strip(format, &dirty), ext).unwrap();
        let leaked: Vec<&String> = after
            .keys()
            .filter(|k| {
                let (group, name) = k.split_once(':').unwrap_or(("", k));
                k.contains("GPS")
                    || group == "XMP"
                    || group == "IPTC"
                    || group == "Photoshop"
                    || (group == "EXIF" && name != "Orientation")
                    || name.contains("Comment")
                    || name.contains("Thumbnail")
                    || name == "Author"
            })
            .collect();
        assert!(
            leaked.is_empty(),
            "{ext}: exiftool still finds {leaked:?} in {after:?}"
        );
        let orientation = after.get("EXIF:Orientation").and_then(|v| v.as_str());
        if keeps_orientation {
            assert_eq!(orientation, Some("Rotate 90 CW"), "{ext}: {after:?}");
        } else {
            assert_eq!(orientation, None, "{ext}");
        }
        assert!(
            !after.keys().any(|k| k.starts_with("ExifTool:Warning")),
            "{ext}: {after:?}"
        );
    }
}

// ---- Chunking ------------------------------------------------------------------------------

fn samples() -> Vec<(Format, Vec<u8>)> {
    vec![
        (Format::Jpeg, phone_jpeg().0),
        (Format::Png, dirty_png().0),
        (Format::Webp, dirty_webp().0),
        (Format::Gif, gif(40, 30, &[(40, 30), (2, 2)])),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// However the stream is cut, every walker gives the same bytes and the same answer, in
    /// both modes, on valid and corrupted images alike.
    #[test]
    fn chunking_never_changes_the_outcome(
        which in 0usize..4,
        strip in any::<bool>(),
        hold in prop_oneof![Just(webp::HOLD_BYTES), 0usize..3_000],
        cuts in proptest::collection::vec(1usize..5_000, 1..40),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    ) {
        let (format, mut data) = samples().swap_remove(which);
        for (at, b) in flips {
            let i = at.index(data.len());
            data[i] = b;
        }
        let opts = MediaOptions { max_pixels: LIMIT, strip };
        let whole = run(format, opts, hold, &data, &mut std::iter::empty());
        let cut = run(format, opts, hold, &data, &mut cuts.iter().copied().cycle());
        let bytes = run(format, opts, hold, &data, &mut std::iter::repeat(1));
        prop_assert_eq!(&cut, &whole);
        prop_assert_eq!(&bytes, &whole);
        if let Ok((out, _)) = &whole {
            prop_assert!(out.len() <= data.len());
        }
    }
}

/// The pipeline runs these on the blocking pool, one batch at a time on any thread.
#[test]
fn walkers_and_checks_can_move_between_threads() {
    fn send<T: Send + 'static>() {}
    send::<MediaWalker>();
    send::<crate::ingest::polyglot::PolyglotScan>();
    send::<crate::ingest::scan::ScanSession>();
}
