//! CRC-32C (Castagnoli), table-driven, for the write-ahead log's checksums.

const POLY: u32 = 0x82f6_3b78;

const TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32C of `data`, continuing from `crc` (start with 0). Uses the CPU's CRC32 instruction
/// where there is one (x86-64 with SSE4.2): a 4 MiB value is checksummed in about a
/// millisecond instead of ten.
pub fn extend(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU supports SSE4.2, checked just above.
            return unsafe { extend_sse42(crc, data) };
        }
    }
    extend_table(crc, data)
}

/// The portable, table-driven CRC-32C.
fn extend_table(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn extend_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut c = u64::from(!crc);
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        c = _mm_crc32_u64(c, v);
    }
    let mut c = c as u32;
    for &b in words.remainder() {
        c = _mm_crc32_u8(c, b);
    }
    !c
}

/// CRC-32C of `data`.
pub fn checksum(data: &[u8]) -> u32 {
    extend(0, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // RFC 3720, appendix B.4.
        assert_eq!(checksum(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(checksum(&[0xffu8; 32]), 0x62a8_ab43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(checksum(&inc), 0x46dd_794e);
        assert_eq!(checksum(b"123456789"), 0xe306_9283);
        assert_eq!(extend(checksum(b"1234"), b"56789"), 0xe306_9283);
        assert_eq!(extend_table(0, b"123456789"), 0xe306_9283);
    }

    #[test]
    fn every_path_agrees_with_the_table() {
        let data: Vec<u8> = (0..4099u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in 0..9 {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4090] {
                let d = &data[start..start + len];
                assert_eq!(checksum(d), extend_table(0, d), "start {start} len {len}");
                let (a, b) = d.split_at(len / 3);
                assert_eq!(
                    extend(checksum(a), b),
                    extend_table(0, d),
                    "split {start} {len}"
                );
            }
        }
    }
}
