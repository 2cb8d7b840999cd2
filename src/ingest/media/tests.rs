//! The walkers on real images: encoded here with the `image` crate, then given GPS EXIF (and a
//! thumbnail), XMP, IPTC, comments, text chunks and trailing data by hand. Stripped, they must
//! come out exactly as the clean encoding plus the segments that are meant to stay (so every
//! entropy-coded, IDAT and VP8L byte is identical), decode to the same pixels, and show
//! `exiftool` no GPS, EXIF or XMP tag besides Orientation. Bombs are refused undecoded, and no
//! way of cutting the stream changes any answer.

use std::process::Command;

use image::{ExtendedColorType, ImageEncoder, ImageFormat, RgbImage};
use proptest::prelude::*;

use super::png::crc32;
use super::*;

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

fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let n = (x * 31 + y * 17) ^ (x * y);
        image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, (n % 256) as u8])
    })
}

fn decode(format: ImageFormat, bytes: &[u8]) -> image::RgbaImage {
    image::load_from_memory_with_format(bytes, format)
        .unwrap_or_else(|e| panic!("{format:?} does not decode: {e}"))
        .to_rgba8()
}

// ---- Metadata built by hand --------------------------------------------------------------

/// A little-endian TIFF block: IFD0 with Make, Orientation and a GPS IFD pointer; the GPS IFD
/// with latitude and longitude; IFD1 with a JPEG thumbnail.
fn exif_tiff(orientation: u16) -> Vec<u8> {
    let mut t = b"II*\0".to_vec();
    t.extend(8u32.to_le_bytes());
    let entry = |t: &mut Vec<u8>, tag: u16, ty: u16, n: u32, v: u32| {
        t.extend(tag.to_le_bytes());
        t.extend(ty.to_le_bytes());
        t.extend(n.to_le_bytes());
        t.extend(v.to_le_bytes());
    };
    // IFD0 at 8: 3 entries (2 + 36 + 4 = 42 bytes) -> data from 50.
    let make_at = 50u32;
    let gps_at = make_at + 8;
    t.extend(3u16.to_le_bytes());
    entry(&mut t, 0x010f, 2, 7, make_at);
    entry(&mut t, 0x0112, 3, 1, u32::from(orientation));
    entry(&mut t, 0x8825, 4, 1, gps_at);
    let ifd1_at = gps_at + 2 + 4 * 12 + 4 + 48;
    t.extend(ifd1_at.to_le_bytes());
    t.extend(b"Coffer\0\0");
    // GPS IFD: 4 entries, then 2 x 3 rationals (48 bytes).
    let rationals = gps_at + 2 + 4 * 12 + 4;
    t.extend(4u16.to_le_bytes());
    entry(&mut t, 0x0001, 2, 2, u32::from_le_bytes(*b"N\0\0\0"));
    entry(&mut t, 0x0002, 5, 3, rationals);
    entry(&mut t, 0x0003, 2, 2, u32::from_le_bytes(*b"E\0\0\0"));
    entry(&mut t, 0x0004, 5, 3, rationals + 24);
    t.extend(0u32.to_le_bytes());
    for (num, den) in [(48, 1), (51, 1), (2950, 100), (2, 1), (17, 1), (4000, 100)] {
        t.extend((num as u32).to_le_bytes());
        t.extend((den as u32).to_le_bytes());
    }
    // IFD1: a thumbnail (any bytes: it must simply be gone).
    let thumb = b"\xff\xd8\xff\xdbTHUMBNAIL-DATA\xff\xd9";
    let thumb_at = ifd1_at + 2 + 2 * 12 + 4;
    t.extend(2u16.to_le_bytes());
    entry(&mut t, 0x0201, 4, 1, thumb_at);
    entry(&mut t, 0x0202, 4, 1, thumb.len() as u32);
    t.extend(0u32.to_le_bytes());
    t.extend(thumb);
    t
}

const XMP: &str = concat!(
    r#"<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>"#,
    r#"<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">"#,
    r#"<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:exif="http://ns.adobe.com/exif/1.0/">"#,
    r#"<dc:creator><rdf:Seq><rdf:li>Secret Author</rdf:li></rdf:Seq></dc:creator>"#,
    r#"<exif:GPSLatitude>48,51.5N</exif:GPSLatitude></rdf:Description></rdf:RDF></x:xmpmeta>"#,
    r#"<?xpacket end="w"?>"#,
);

/// A well-formed ICC profile holding one tag (the media white point): 164 bytes.
fn icc_profile() -> Vec<u8> {
    let mut p = vec![0u8; 128];
    p[..4].copy_from_slice(&164u32.to_be_bytes());
    p[8..12].copy_from_slice(&[2, 0x10, 0, 0]);
    p[12..16].copy_from_slice(b"mntr");
    p[16..20].copy_from_slice(b"RGB ");
    p[20..24].copy_from_slice(b"XYZ ");
    p[36..40].copy_from_slice(b"acsp");
    p.extend(1u32.to_be_bytes());
    p.extend(b"wtpt");
    p.extend(144u32.to_be_bytes());
    p.extend(20u32.to_be_bytes());
    p.extend(b"XYZ \0\0\0\0");
    for v in [0xF6D6u32, 0x1_0000, 0xD32D] {
        p.extend(v.to_be_bytes());
    }
    p
}

fn jpeg_segment(marker: u8, payload: &[u8]) -> Vec<u8> {
    let mut s = vec![0xFF, marker];
    s.extend((payload.len() as u16 + 2).to_be_bytes());
    s.extend(payload);
    s
}

fn with_prefix(prefix: &[u8], body: &[u8]) -> Vec<u8> {
    [prefix, body].concat()
}

/// (marker, offset, length incl. marker) of each segment before the first SOS.
fn jpeg_segments(j: &[u8]) -> Vec<(u8, usize, usize)> {
    let mut at = 2;
    let mut v = Vec::new();
    while j[at] == 0xFF && j[at + 1] != 0xDA {
        let len = usize::from(u16::from_be_bytes([j[at + 2], j[at + 3]])) + 2;
        v.push((j[at + 1], at, len));
        at += len;
    }
    v
}

/// A JPEG the way a phone writes one: JFIF (with a thumbnail), EXIF (GPS, orientation 6,
/// thumbnail), XMP, ICC, MPF, IPTC, Adobe, comments (one between the tables), and a video
/// appended after EOI. Returns (dirty, expected after stripping, clean encoding).
fn phone_jpeg() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let img = picture(96, 64);
    let mut clean = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut clean, 85)
        .write_image(img.as_raw(), 96, 64, ExtendedColorType::Rgb8)
        .unwrap();
    let segs = jpeg_segments(&clean);
    let sof = segs.iter().find(|s| s.0 == 0xC0).expect("baseline SOF").1;
    let (app0_marker, app0_at, app0_len) = segs[0];
    assert_eq!(app0_marker, 0xE0, "the encoder writes JFIF first");
    let fields = &clean[app0_at + 4..app0_at + 16];
    // Re-issue APP0 with a 2x1 thumbnail, as some cameras do.
    let app0 = jpeg_segment(0xE0, &[fields, &[2, 1, 255, 0, 0, 0, 255, 0]].concat());
    let jfif_kept = jpeg_segment(0xE0, &[fields, &[0, 0]].concat());
    let (between, tail) = (&clean[app0_at + app0_len..sof], &clean[sof..]);
    let exif = jpeg_segment(0xE1, &with_prefix(b"Exif\0\0", &exif_tiff(6)));
    let xmp = jpeg_segment(
        0xE1,
        &with_prefix(b"http://ns.adobe.com/xap/1.0/\0", XMP.as_bytes()),
    );
    let icc = jpeg_segment(0xE2, &with_prefix(b"ICC_PROFILE\0\x01\x01", &icc_profile()));
    let mpf = jpeg_segment(
        0xE2,
        &with_prefix(b"MPF\0", b"MM\0*\0\0\0\x08 preview offsets"),
    );
    let iptc = {
        let mut p = b"Photoshop 3.0\08BIM\x04\x04\0\0".to_vec();
        let rec = b"\x1c\x02\x78\x00\x0eSecret caption";
        p.extend((rec.len() as u32).to_be_bytes());
        p.extend(rec);
        jpeg_segment(0xED, &p)
    };
    let adobe = jpeg_segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01");
    let com = jpeg_segment(0xFE, b"shot at home, 12 Secret Street");
    let big_app = jpeg_segment(0xE9, &[0x5A; 65_000]);
    let minimal_exif = jpeg_segment(0xE1, &with_prefix(b"Exif\0\0", &exif::minimal(6)));
    let soi = &[0xFF, 0xD8][..];
    let dirty = [
        soi,
        &app0,
        &exif,
        &xmp,
        &icc,
        &mpf,
        &iptc,
        &big_app,
        &adobe,
        &com,
        between,
        &com,
        tail,
        b"ftypmp42 motion photo video bytes",
    ]
    .concat();
    let expected = [
        soi,
        &jfif_kept[..],
        &minimal_exif,
        &icc,
        &adobe,
        between,
        tail,
    ]
    .concat();
    (dirty, expected, clean)
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    c.extend(kind);
    c.extend(data);
    let crc = crc32(&c[4..]);
    c.extend(crc.to_be_bytes());
    c
}

/// zlib with one stored block (enough for zTXt).
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut z = vec![0x78, 0x01, 0x01];
    z.extend((data.len() as u16).to_le_bytes());
    z.extend((!(data.len() as u16)).to_le_bytes());
    z.extend(data);
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    z.extend(((b << 16) | a).to_be_bytes());
    z
}

/// A PNG with tEXt, zTXt, iTXt (XMP), eXIf (GPS, orientation 6), tIME, a private chunk, and
/// bytes after IEND; gAMA and pHYs must stay. Returns (dirty, expected, clean).
fn dirty_png() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let img = picture(80, 60);
    let mut clean = Vec::new();
    image::codecs::png::PngEncoder::new(&mut clean)
        .write_image(img.as_raw(), 80, 60, ExtendedColorType::Rgb8)
        .unwrap();
    let ihdr_end = 8 + 8 + 13 + 4;
    let (head, tail) = clean.split_at(ihdr_end);
    let gama = png_chunk(b"gAMA", &45455u32.to_be_bytes());
    let phys = png_chunk(b"pHYs", b"\0\0\x0b\x13\0\0\x0b\x13\x01");
    let text = png_chunk(b"tEXt", b"Comment\0shot at home, 12 Secret Street");
    let ztxt = png_chunk(
        b"zTXt",
        &[&b"Author\0\0"[..], &zlib_stored(b"Secret Author")].concat(),
    );
    let itxt = png_chunk(
        b"iTXt",
        &[&b"XML:com.adobe.xmp\0\0\0\0\0"[..], XMP.as_bytes()].concat(),
    );
    let exif = png_chunk(b"eXIf", &exif_tiff(6));
    let time = png_chunk(b"tIME", b"\x07\xe9\x01\x02\x03\x04\x05");
    let private = png_chunk(b"prVt", b"private metadata");
    let minimal = png_chunk(b"eXIf", &exif::minimal(6));
    let (idat_and_iend, iend) = tail.split_at(tail.len() - 12);
    let dirty = [
        head,
        &gama,
        &text,
        &exif,
        &ztxt,
        &phys,
        &private,
        idat_and_iend,
        &itxt,
        &time,
        iend,
        b"trailing",
    ]
    .concat();
    let expected = [head, &gama, &minimal, &phys, idat_and_iend, iend].concat();
    (dirty, expected, clean)
}

fn riff_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = kind.to_vec();
    c.extend((data.len() as u32).to_le_bytes());
    c.extend(data);
    if data.len() % 2 == 1 {
        c.push(0);
    }
    c
}

fn riff(chunks: &[Vec<u8>]) -> Vec<u8> {
    let body = chunks.concat();
    let mut r = b"RIFF".to_vec();
    r.extend((body.len() as u32 + 4).to_le_bytes());
    r.extend(b"WEBP");
    r.extend(body);
    r
}

/// An extended WebP: VP8X (ICC, EXIF, XMP flags), ICCP, the VP8L image, EXIF (GPS), XMP, an
/// unknown chunk, bytes after the RIFF. Returns (dirty, expected, clean simple file).
fn dirty_webp() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let img = picture(70, 50);
    let mut clean = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut clean)
        .write_image(img.as_raw(), 70, 50, ExtendedColorType::Rgb8)
        .unwrap();
    assert_eq!(&clean[12..16], b"VP8L", "a simple lossless file");
    let vp8l = clean[12..].to_vec();
    let vp8x = |flags: u8| {
        let mut p = vec![flags, 0, 0, 0];
        p.extend(&69u32.to_le_bytes()[..3]);
        p.extend(&49u32.to_le_bytes()[..3]);
        riff_chunk(b"VP8X", &p)
    };
    let iccp = riff_chunk(b"ICCP", &icc_profile());
    let exif = riff_chunk(b"EXIF", &exif_tiff(6));
    let xmp = riff_chunk(b"XMP ", XMP.as_bytes());
    let unknown = riff_chunk(b"zzzz", b"odd private bytes");
    let mut dirty = riff(&[
        vp8x(0x20 | 0x08 | 0x04),
        iccp.clone(),
        vp8l.clone(),
        exif,
        xmp,
        unknown,
    ]);
    dirty.extend(b"trailing");
    let expected = riff(&[vp8x(0x20), iccp, vp8l]);
    (dirty, expected, clean)
}

fn gif(w: u16, h: u16, frames: &[(u16, u16)]) -> Vec<u8> {
    let mut g = b"GIF89a".to_vec();
    g.extend(w.to_le_bytes());
    g.extend(h.to_le_bytes());
    g.extend([0x80, 0, 0]); // 2-colour global table
    g.extend([0, 0, 0, 255, 255, 255]);
    g.extend(b"\x21\xfe\x05hello\x00"); // comment extension
    for (fw, fh) in frames {
        g.extend([0x2c, 0, 0, 0, 0]);
        g.extend(fw.to_le_bytes());
        g.extend(fh.to_le_bytes());
        g.extend([0, 2, 2, 0x4c, 0x01, 0]);
    }
    g.push(0x3b);
    g
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
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
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
