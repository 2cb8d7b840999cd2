//! Test images with metadata, built by hand around clean encodings from the `image` crate:
//! each builder returns the dirty file and exactly what stripping must leave of it.

use image::{ExtendedColorType, ImageEncoder, RgbImage};

use super::super::exif;
use super::super::png::crc32;

pub(super) fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let n = (x * 31 + y * 17) ^ (x * y);
        image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, (n % 256) as u8])
    })
}

// ---- --------------------------------------------------------------

/// A little-endian TIFF block: IFD0 with Make, Orientation and a GPS IFD pointer; the GPS IFD
/// with latitude and longitude; IFD1 with a JPEG thumbnail.
pub(super) fn exif_tiff(orientation: u16) -> Vec<u8> {
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

pub(super) const XMP: &str = concat!(
    r#"<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>"#,
    r#"<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">"#,
    r#"<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:exif="http://ns.adobe.com/exif/1.0/">"#,
    r#"<dc:creator><rdf:Seq><rdf:li>Secret Author</rdf:li></rdf:Seq></dc:creator>"#,
    r#"<exif:GPSLatitude>48,51.5N</exif:GPSLatitude></rdf:Description></rdf:RDF></x:xmpmeta>"#,
    r#"<?xpacket end="w"?>"#,
);

/// A well-formed ICC profile holding one tag (the media white point): 164 bytes.
pub(super) fn icc_profile() -> Vec<u8> {
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

pub(super) fn jpeg_segment(marker: u8, payload: &[u8]) -> Vec<u8> {
    let mut s = vec![0xFF, marker];
    s.extend((payload.len() as u16 + 2).to_be_bytes());
    s.extend(payload);
    s
}

pub(super) fn with_prefix(prefix: &[u8], body: &[u8]) -> Vec<u8> {
    [prefix, body].concat()
}

/// (marker, offset, length incl. marker) of each segment before the first SOS.
pub(super) fn jpeg_segments(j: &[u8]) -> Vec<(u8, usize, usize)> {
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
pub(super) fn phone_jpeg() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
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

pub(super) fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    c.extend(kind);
    c.extend(data);
    let crc = crc32(&c[4..]);
    c.extend(crc.to_be_bytes());
    c
}

/// zlib with one stored block (enough for zTXt).
pub(super) fn zlib_stored(data: &[u8]) -> Vec<u8> {
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
pub(super) fn dirty_png() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
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

pub(super) fn riff_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = kind.to_vec();
    c.extend((data.len() as u32).to_le_bytes());
    c.extend(data);
    if data.len() % 2 == 1 {
        c.push(0);
    }
    c
}

pub(super) fn riff(chunks: &[Vec<u8>]) -> Vec<u8> {
    let body = chunks.concat();
    let mut r = b"RIFF".to_vec();
    r.extend((body.len() as u32 + 4).to_le_bytes());
    r.extend(b"WEBP");
    r.extend(body);
    r
}

/// An extended WebP: VP8X (ICC, EXIF, XMP flags), ICCP, the VP8L image, EXIF (GPS), XMP, an
/// unknown chunk, bytes after the RIFF. Returns (dirty, expected, clean simple file).
pub(super) fn dirty_webp() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
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

pub(super) fn gif(w: u16, h: u16, frames: &[(u16, u16)]) -> Vec<u8> {
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
