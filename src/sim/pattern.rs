//! Deterministic byte streams for checking that a data path delivers every
//! byte once and in order: [`payload`] for short buffers, [`Pattern`] for
//! transfers too large to keep in memory. Tests and the soak bench share it.

/// Deterministic payload of `len` bytes.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[0] ^ seed)
        .collect()
}

/// An endless deterministic byte stream: byte `p` is `block[p % block.len()]`.
/// The period is not a power of two, so a lost, doubled or reordered write
/// shows as a mismatch.
pub struct Pattern {
    block: Vec<u8>,
}

/// The first byte of a received buffer that is not the stream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Stream offset of the wrong byte.
    pub offset: u64,
    pub want: u8,
    pub got: u8,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stream corrupted at byte {}: want {:#04x}, got {:#04x}",
            self.offset, self.want, self.got
        )
    }
}

impl Pattern {
    pub fn new(seed: u8) -> Self {
        Self {
            block: payload(1024 * 1024 + 7, seed),
        }
    }

    /// Fills `buf` with the stream's bytes from `offset`.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let p = self.block.len();
        let mut start = (offset % p as u64) as usize;
        let mut done = 0;
        while done < buf.len() {
            let n = (p - start).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&self.block[start..start + n]);
            done += n;
            start = 0;
        }
    }

    /// The first byte of `buf` that differs from the stream at `offset`.
    /// Compares whole runs of the block (memcmp), so checking keeps up with
    /// a reader even in a debug build.
    pub fn mismatch(&self, offset: u64, buf: &[u8]) -> Option<Mismatch> {
        let p = self.block.len();
        let mut start = (offset % p as u64) as usize;
        let mut done = 0;
        while done < buf.len() {
            let n = (p - start).min(buf.len() - done);
            let (want, got) = (&self.block[start..start + n], &buf[done..done + n]);
            if want != got {
                let i = want.iter().zip(got).position(|(a, b)| a != b).unwrap_or(0);
                return Some(Mismatch {
                    offset: offset + (done + i) as u64,
                    want: want[i],
                    got: got[i],
                });
            }
            done += n;
            start = 0;
        }
        None
    }

    /// Panics naming the first wrong byte when `buf` is not the stream's
    /// bytes from `offset`.
    pub fn check(&self, offset: u64, buf: &[u8]) {
        if let Some(m) = self.mismatch(offset, buf) {
            panic!("{m}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_doubled_or_lost_byte() {
        let p = Pattern::new(3);
        let mut buf = vec![0u8; 3 * 1024 * 1024];
        p.fill(5, &mut buf);
        assert_eq!(p.mismatch(5, &buf), None);
        // Doubling 456 bytes (a write replayed) shifts everything after it.
        let mut doubled = buf[..1000].to_vec();
        doubled.extend_from_slice(&buf[544..1000]);
        let m = p.mismatch(5, &doubled).expect("a doubled run is found");
        assert!(m.offset >= 1005 && m.offset < 1005 + 456, "{m}");
        assert!(p.mismatch(6, &buf).is_some(), "an offset error is found");
        // A flipped byte after the block has wrapped twice.
        let at = 2 * (1024 * 1024 + 7) + 99;
        buf[at] ^= 0xff;
        let m = p.mismatch(5, &buf).expect("a flipped byte is found");
        assert_eq!((m.offset, m.got), (5 + at as u64, buf[at]));
    }
}
