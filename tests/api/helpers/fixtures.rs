//! Test files: the smallest byte strings each type's magic-number check accepts, padded with
//! deterministic noise to any length.

/// Deterministic, incompressible-looking bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn with_header(header: &[u8], len: usize, seed: u64) -> Vec<u8> {
    let mut v = header.to_vec();
    if len > v.len() {
        v.extend(noise(len - v.len(), seed));
    }
    v
}

/// A PNG of exactly `len` bytes (at least 57): signature, IHDR (1x1), one IDAT chunk of
/// noise, IEND. Not decodable, but every chunk is where the format puts it, so the upload
/// pipeline's PNG walker reads its size and, finding no metadata, stores it byte for byte.
pub fn png(len: usize) -> Vec<u8> {
    let mut v = png_head(len.max(PNG_FRAME) - PNG_FRAME);
    v.extend(noise(len.max(PNG_FRAME) - PNG_FRAME, 1));
    v.extend_from_slice(PNG_TAIL);
    v
}

/// Bytes of [`png`] around the IDAT payload.
pub const PNG_FRAME: usize = 8 + 25 + 8 + PNG_TAIL.len();
/// The IDAT chunk's CRC (not checked by the walker) and IEND.
pub const PNG_TAIL: &[u8] = b"\0\0\0\0\0\0\0\0IEND\xaeB`\x82";

/// The start of a [`png`] whose IDAT payload will be `idat` bytes: signature, IHDR and the
/// IDAT chunk header. Stream `idat` bytes of anything after it, then [`PNG_TAIL`].
pub fn png_head(idat: usize) -> Vec<u8> {
    let mut v =
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"
            .to_vec();
    v.extend_from_slice(&u32::try_from(idat).unwrap().to_be_bytes());
    v.extend_from_slice(b"IDAT");
    v
}

/// A JPEG of exactly `len` bytes (at least 43): SOI, JFIF APP0 (no thumbnail), a 1x1
/// greyscale SOF0, SOS, noise as entropy-coded data (no FF in it), EOI.
pub fn jpeg(len: usize) -> Vec<u8> {
    let mut v = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\
        \xff\xc0\x00\x0b\x08\x00\x01\x00\x01\x01\x01\x11\x00\
        \xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
        .to_vec();
    let body = len.saturating_sub(v.len() + 2);
    v.extend(
        noise(body, 2)
            .into_iter()
            .map(|b| if b == 0xFF { 0xFE } else { b }),
    );
    v.extend_from_slice(b"\xff\xd9");
    v
}

/// A GIF89a of about `len` bytes (at least 32): a 1x1 image whose LZW data is noise in
/// 255-byte sub-blocks, then the trailer.
pub fn gif(len: usize) -> Vec<u8> {
    let mut v = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\0\0\0\xff\xff\xff\
        \x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02"
        .to_vec();
    let mut data = noise(len.saturating_sub(v.len() + 3), 3);
    while !data.is_empty() {
        let n = data.len().min(255);
        v.push(u8::try_from(n).unwrap());
        v.extend(data.drain(..n));
    }
    v.extend_from_slice(b"\x00\x3b");
    v
}

/// A PDF header, then noise.
pub fn pdf(len: usize) -> Vec<u8> {
    with_header(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", len, 4)
}

/// An ELF header, then noise.
pub fn elf(len: usize) -> Vec<u8> {
    with_header(b"\x7fELF\x02\x01\x01\x00", len, 5)
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// A tus `Upload-Metadata` header naming the file `name` (its value base64, as tus says).
pub fn tus_metadata(name: &str) -> String {
    use base64::Engine as _;
    format!(
        "filename {}",
        base64::engine::general_purpose::STANDARD.encode(name)
    )
}
