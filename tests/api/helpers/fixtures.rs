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

/// A PNG signature and IHDR header, then noise.
pub fn png(len: usize) -> Vec<u8> {
    with_header(
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00",
        len,
        1,
    )
}

/// A JPEG SOI + JFIF APP0, then noise.
pub fn jpeg(len: usize) -> Vec<u8> {
    with_header(
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00",
        len,
        2,
    )
}

/// A GIF89a header, then noise.
pub fn gif(len: usize) -> Vec<u8> {
    with_header(b"GIF89a\x01\x00\x01\x00\x80\x00\x00", len, 3)
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
