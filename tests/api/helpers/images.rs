//! Real images with private metadata, built around clean encodings from the `image` crate:
//! a JPEG with EXIF (camera make, GPS position, orientation), XMP and a comment; a PNG with
//! tEXt, iTXt (XMP), eXIf (GPS) and tIME. Each builder returns the dirty file and the clean
//! encoding it was made from, which is what stripping must leave (orientation 1: nothing of
//! the EXIF stays).

use image::{ExtendedColorType, ImageEncoder, RgbImage};

/// A picture with detail in every channel (so a changed pixel shows).
pub fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let n = (x * 31 + y * 17) ^ (x * y);
        image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, (n % 256) as u8])
    })
}

/// A little-endian TIFF block: IFD0 with Make, Orientation and a GPS IFD pointer; the GPS
/// IFD with a latitude.
pub fn exif_tiff(orientation: u16) -> Vec<u8> {
    fn entry(v: &mut Vec<u8>, tag: u16, kind: u16, count: u32, value: u32) {
        v.extend(tag.to_le_bytes());
        v.extend(kind.to_le_bytes());
        v.extend(count.to_le_bytes());
        v.extend(value.to_le_bytes());
    }
    let make = b"SecretCam\0";
    let mut v = b"II*\0\x08\0\0\0".to_vec();
    // IFD0 at 8: 3 entries (42 bytes), then Make's text at 50, the GPS IFD at 60.
    v.extend(3u16.to_le_bytes());
    entry(&mut v, 0x010F, 2, make.len() as u32, 50);
    entry(&mut v, 0x0112, 3, 1, u32::from(orientation));
    entry(&mut v, 0x8825, 4, 1, 60);
    v.extend(0u32.to_le_bytes());
    v.extend(make);
    // GPS IFD at 60: latitude ref and latitude (30 bytes), its rationals at 90.
    v.extend(2u16.to_le_bytes());
    entry(&mut v, 0x0001, 2, 2, u32::from_le_bytes(*b"N\0\0\0"));
    entry(&mut v, 0x0002, 5, 3, 90);
    v.extend(0u32.to_le_bytes());
    for (num, den) in [(48u32, 1u32), (51, 1), (2412, 100)] {
        v.extend(num.to_le_bytes());
        v.extend(den.to_le_bytes());
    }
    v
}

/// An XMP packet naming a creator and a place.
pub const XMP: &str = concat!(
    "<?xpacket begin='' id='W5M0MpCehiHzreSzNTczkc9d'?>",
    "<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>",
    "<rdf:Description rdf:about='' xmlns:dc='http://purl.org/dc/elements/1.1/' ",
    "xmlns:photoshop='http://ns.adobe.com/photoshop/1.0/' photoshop:City='Secretville'>",
    "<dc:creator><rdf:Seq><rdf:li>Secret Author</rdf:li></rdf:Seq></dc:creator>",
    "</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end='w'?>"
);

fn jpeg_segment(marker: u8, payload: &[u8]) -> Vec<u8> {
    let mut s = vec![0xFF, marker];
    s.extend(u16::try_from(payload.len() + 2).unwrap().to_be_bytes());
    s.extend(payload);
    s
}

/// A JPEG (96x64, baseline) with EXIF (make, GPS, `orientation`), XMP and a comment after its
/// JFIF header. Returns (dirty, clean encoding).
pub fn jpeg_with_metadata(orientation: u16) -> (Vec<u8>, Vec<u8>) {
    let img = picture(96, 64);
    let mut clean = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut clean, 85)
        .write_image(img.as_raw(), 96, 64, ExtendedColorType::Rgb8)
        .unwrap();
    assert_eq!(&clean[2..4], &[0xFF, 0xE0], "the encoder writes JFIF first");
    let app0_end = 4 + usize::from(u16::from_be_bytes([clean[4], clean[5]]));
    let exif = jpeg_segment(0xE1, &[&b"Exif\0\0"[..], &exif_tiff(orientation)].concat());
    let xmp = jpeg_segment(
        0xE1,
        &[&b"http://ns.adobe.com/xap/1.0/\0"[..], XMP.as_bytes()].concat(),
    );
    let com = jpeg_segment(0xFE, b"shot at home, 12 Secret Street");
    let dirty = [&clean[..app0_end], &exif, &xmp, &com, &clean[app0_end..]].concat();
    (dirty, clean)
}

/// The entropy-coded data of a baseline JPEG: from the end of the SOS header to EOI.
pub fn entropy_coded(jpeg: &[u8]) -> &[u8] {
    let sos = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xDA])
        .expect("an SOS marker");
    let header = usize::from(u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]));
    &jpeg[sos + 2 + header..]
}

/// CRC-32 (ISO 3309), as PNG chunks carry it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = u32::try_from(data.len()).unwrap().to_be_bytes().to_vec();
    c.extend(kind);
    c.extend(data);
    let crc = crc32(&c[4..]);
    c.extend(crc.to_be_bytes());
    c
}

/// A PNG (80x60 RGB) with tEXt, iTXt (XMP), eXIf (make, GPS, orientation 1) and tIME after
/// IHDR. Returns (dirty, clean encoding).
pub fn png_with_metadata() -> (Vec<u8>, Vec<u8>) {
    let img = picture(80, 60);
    let mut clean = Vec::new();
    image::codecs::png::PngEncoder::new(&mut clean)
        .write_image(img.as_raw(), 80, 60, ExtendedColorType::Rgb8)
        .unwrap();
    let ihdr_end = 8 + 8 + 13 + 4;
    let dirty = [
        &clean[..ihdr_end],
        &png_chunk(b"tEXt", b"Comment\0shot at home, 12 Secret Street"),
        &png_chunk(
            b"iTXt",
            &[&b"XML:com.adobe.xmp\0\0\0\0\0"[..], XMP.as_bytes()].concat(),
        ),
        &png_chunk(b"eXIf", &exif_tiff(1)),
        &png_chunk(b"tIME", b"\x07\xea\x0c\x05\x03\x04\x05"),
        &clean[ihdr_end..],
    ]
    .concat();
    (dirty, clean)
}

/// The IDAT payloads of a PNG, concatenated.
pub fn idat(png: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 8;
    while at + 8 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        if &png[at + 4..at + 8] == b"IDAT" {
            out.extend_from_slice(&png[at + 8..at + 8 + len]);
        }
        at += 12 + len;
    }
    out
}

/// Decoded RGB8 pixels.
pub fn pixels(bytes: &[u8]) -> Vec<u8> {
    image::load_from_memory(bytes)
        .expect("the stored image decodes")
        .to_rgb8()
        .into_raw()
}

/// exiftool's tags for a file (`-G` group:name keys, everything: `-a -u -ee`), or `None` when
/// exiftool is not installed (then the caller skips, unless `COFFER_TEST_REQUIRE_EXIFTOOL=1`,
/// as CI sets, makes that a failure).
pub fn exiftool(path: &std::path::Path) -> Option<serde_json::Map<String, serde_json::Value>> {
    let out = match std::process::Command::new("exiftool")
        .args(["-json", "-G", "-a", "-u", "-ee"])
        .arg(path)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var("COFFER_TEST_REQUIRE_EXIFTOOL").as_deref() != Ok("1"),
                "COFFER_TEST_REQUIRE_EXIFTOOL=1 but exiftool is not installed (Debian libimage-exiftool-perl)"
            );
            return None;
        }
        Err(e) => panic!("exiftool: {e}"),
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "exiftool output: {e}: {}; its errors: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v.as_array()
        .and_then(|a| a.first())
        .and_then(|o| o.as_object())
        .cloned()
}

/// The tags exiftool finds that stripping must have removed: any GPS, XMP, IPTC or EXIF tag
/// (except Orientation, which the contract keeps), comments, thumbnails, authors.
pub fn leaked_tags(tags: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    tags.keys()
        .filter(|k| {
            let (group, name) = k.split_once(':').unwrap_or(("", k));
            k.contains("GPS")
                || group == "XMP"
                || group == "IPTC"
                || (group == "EXIF" && name != "Orientation")
                || name.contains("Comment")
                || name.contains("Thumbnail")
                || name == "Make"
                || name == "Author"
        })
        .cloned()
        .collect()
}
