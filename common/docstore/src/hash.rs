//! A stable 128-bit content hash (FNV-1a) for `dbHash`, used to compare replicas. It needs to be
//! deterministic across processes and versions, not cryptographic: it detects divergence, it does
//! not defend against an adversary.

/// FNV-1a with a 128-bit state.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fnv128(u128);

const OFFSET_BASIS: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

impl Fnv128 {
    /// The empty hash.
    pub fn new() -> Fnv128 {
        Fnv128(OFFSET_BASIS)
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u128::from(*byte);
            self.0 = self.0.wrapping_mul(PRIME);
        }
    }

    /// The hash as 32 lower-case hex digits.
    pub fn hex(self) -> String {
        format!("{:032x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_vectors() {
        // Published FNV-1a 128 test vectors.
        assert_eq!(Fnv128::new().hex(), "6c62272e07bb014262b821756295c58d");
        let mut hash = Fnv128::new();
        hash.update(b"a");
        assert_eq!(hash.hex(), "d228cb696f1a8caf78912b704e4a8964");
    }
}
