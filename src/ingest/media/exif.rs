//! The one EXIF fact coffer keeps: the Orientation tag (0x0112) of a TIFF structure's first
//! IFD, read from a bounded prefix, and the smallest TIFF structure that carries it alone.
//!
//! Invariant: reading never looks past the bytes given and accepts only a well-formed IFD0
//! entry of type SHORT with a value 2-8 (1 is the default and needs no tag); anything else
//! is "no orientation", so a malformed EXIF block costs the orientation, never the upload.

use super::io::array;

/// The TIFF tag number of Orientation.
const ORIENTATION: u16 = 0x0112;
/// TIFF type SHORT.
const SHORT: u16 = 3;

/// How many bytes of an EXIF block are enough to find IFD0's Orientation in practice: IFD0
/// follows the 8-byte TIFF header in every camera and editor file seen, and its entries are
/// sorted by tag, Orientation (0x0112) among the first.
pub(crate) const PREFIX: usize = 64 * 1024;

/// The Orientation of a TIFF structure (`II*\0` or `MM\0*` first), when IFD0 holds one that
/// is not the default. `tiff` may be a prefix of the block.
pub(crate) fn orientation(tiff: &[u8]) -> Option<u16> {
    let le = match array::<4>(tiff, 0)? {
        [b'I', b'I', 42, 0] => true,
        [b'M', b'M', 0, 42] => false,
        _ => return None,
    };
    let u16_at = |at: usize| {
        array::<2>(tiff, at).map(|b| {
            if le {
                u16::from_le_bytes(b)
            } else {
                u16::from_be_bytes(b)
            }
        })
    };
    let u32_at = |at: usize| {
        array::<4>(tiff, at).map(|b| {
            if le {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            }
        })
    };
    let ifd = usize::try_from(u32_at(4)?).ok()?;
    let count = usize::from(u16_at(ifd)?);
    (0..count).find_map(|i| {
        let entry = ifd.checked_add(2)?.checked_add(i.checked_mul(12)?)?;
        if u16_at(entry)? != ORIENTATION || u16_at(entry + 2)? != SHORT || u32_at(entry + 4)? != 1 {
            return None;
        }
        Some(u16_at(entry + 8)?).filter(|v| (2..=8).contains(v))
    })
}

/// The size of [`minimal`]'s block.
pub(crate) const MINIMAL_LEN: usize = 26;

/// The Orientation worth keeping from `tiff`, the whole EXIF block of `len` bytes: only when
/// the block is at least as long as its replacement, so stripping never makes a file larger
/// (a real EXIF block always is; a 22-byte one with nothing but the tag is not worth it).
pub(crate) fn kept_orientation(tiff: &[u8], len: u64) -> Option<u16> {
    orientation(tiff).filter(|_| len >= MINIMAL_LEN as u64)
}

/// A big-endian TIFF structure whose IFD0 holds only Orientation (26 bytes).
pub(crate) fn minimal(orientation: u16) -> [u8; MINIMAL_LEN] {
    let [hi, lo] = orientation.to_be_bytes();
    [
        b'M', b'M', 0, 42, 0, 0, 0, 8, // header, IFD0 at 8
        0, 1, // one entry
        0x01, 0x12, 0, 3, 0, 0, 0, 1, hi, lo, 0, 0, // Orientation, SHORT, 1, value
        0, 0, 0, 0, // no next IFD
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TIFF block with IFD0 holding `entries` (tag, type, count, value bytes).
    fn tiff(le: bool, entries: &[(u16, u16, u32, [u8; 4])]) -> Vec<u8> {
        let w16 = |v: u16| if le { v.to_le_bytes() } else { v.to_be_bytes() };
        let w32 = |v: u32| if le { v.to_le_bytes() } else { v.to_be_bytes() };
        let mut t = if le {
            b"II*\0".to_vec()
        } else {
            b"MM\0*".to_vec()
        };
        t.extend(w32(8));
        t.extend(w16(entries.len() as u16));
        for (tag, ty, n, v) in entries {
            t.extend(w16(*tag));
            t.extend(w16(*ty));
            t.extend(w32(*n));
            t.extend(v);
        }
        t.extend([0; 4]);
        t
    }

    #[test]
    fn reads_orientation_in_both_byte_orders_and_only_when_well_formed() {
        let le6 = tiff(
            true,
            &[(0x010f, 2, 4, *b"Can\0"), (0x0112, 3, 1, [6, 0, 0, 0])],
        );
        assert_eq!(orientation(&le6), Some(6));
        let be8 = tiff(false, &[(0x0112, 3, 1, [0, 8, 0, 0])]);
        assert_eq!(orientation(&be8), Some(8));
        assert_eq!(
            orientation(&tiff(false, &[(0x0112, 3, 1, [0, 1, 0, 0])])),
            None
        );
        assert_eq!(
            orientation(&tiff(false, &[(0x0112, 3, 1, [0, 9, 0, 0])])),
            None
        );
        assert_eq!(
            orientation(&tiff(false, &[(0x0112, 4, 1, [0, 0, 0, 6])])),
            None
        );
        assert_eq!(orientation(&le6[..le6.len() - 10]), None);
        assert_eq!(orientation(b"MM\0*\xff\xff\xff\xff"), None);
        assert_eq!(orientation(b""), None);
    }

    #[test]
    fn the_minimal_block_reads_back() {
        for o in 2..=8 {
            assert_eq!(orientation(&minimal(o)), Some(o));
        }
    }
}
