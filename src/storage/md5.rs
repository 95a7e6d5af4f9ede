//! MD5, the etag of every stored file.
//!
//! A large body's etag is computed while the bytes arrive, so the hash rate is the ceiling of one
//! upload stream (small bodies, held in memory, are hashed once complete, several side by side:
//! [`batch`], [`digest_many`]). On x86-64 the block function is hand-scheduled assembly: the
//! message word, the round constant and the terms that do not depend on the previous step's result
//! are added first, so each step's dependency chain is only the boolean function of that result,
//! one add, the rotate and the final add (about 4.5 cycles per byte; the `md-5` crate's assembly
//! backend measured ~0.87 × coreutils' `md5sum` on the benchmark machine, this one ~1.1 ×, see
//! `BENCHMARKS.md`). Other targets use the same schedule written in Rust.

pub mod batch;
mod lanes;
pub use lanes::{digest_many, LANES};

/// Round constants: `floor(abs(sin(i + 1)) * 2^32)`.
#[cfg(any(test, not(target_arch = "x86_64")))]
const K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

const INIT: [u32; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];

/// An incremental MD5: `update` with any slices, `finalize` for the 16-byte digest.
#[derive(Clone)]
pub struct Md5 {
    state: [u32; 4],
    /// Bytes of an incomplete block.
    pending: [u8; 64],
    pending_len: usize,
    /// Total bytes fed.
    len: u64,
}

impl Default for Md5 {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Md5 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Md5").field("len", &self.len).finish()
    }
}

impl Md5 {
    pub fn new() -> Md5 {
        Md5 {
            state: INIT,
            pending: [0; 64],
            pending_len: 0,
            len: 0,
        }
    }

    /// The digest of `data` in one call.
    pub fn digest(data: &[u8]) -> [u8; 16] {
        let mut h = Md5::new();
        h.update(data);
        h.finalize()
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        if self.pending_len > 0 {
            let take = (64 - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            if self.pending_len < 64 {
                return;
            }
            compress(&mut self.state, &self.pending);
            self.pending_len = 0;
        }
        let whole = data.len() - data.len() % 64;
        compress(&mut self.state, &data[..whole]);
        let rest = &data[whole..];
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    pub fn finalize(mut self) -> [u8; 16] {
        let tail = Tail::new(&self.pending[..self.pending_len], self.len);
        compress(&mut self.state, tail.blocks());
        output(self.state)
    }
}

/// The padded end of a message: its last, incomplete block, the 0x80 byte, zeros and the
/// message's length in bits, in one or two blocks.
struct Tail {
    bytes: [u8; 128],
    /// Blocks used: 1 or 2.
    count: usize,
}

impl Tail {
    /// The end of a message of `len` bytes whose last `rest.len()` (fewer than 64) fill no
    /// block.
    fn new(rest: &[u8], len: u64) -> Tail {
        let mut bytes = [0u8; 128];
        bytes[..rest.len()].copy_from_slice(rest);
        bytes[rest.len()] = 0x80;
        let count = if rest.len() < 56 { 1 } else { 2 };
        bytes[count * 64 - 8..count * 64].copy_from_slice(&len.wrapping_mul(8).to_le_bytes());
        Tail { bytes, count }
    }

    fn blocks(&self) -> &[u8] {
        &self.bytes[..self.count * 64]
    }
}

/// The digest of a final state: its words, little-endian.
fn output(state: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// Runs the block function over `blocks` (a multiple of 64 bytes).
fn compress(state: &mut [u32; 4], blocks: &[u8]) {
    debug_assert_eq!(blocks.len() % 64, 0);
    #[cfg(target_arch = "x86_64")]
    for block in blocks.chunks_exact(64) {
        compress_asm(state, block.try_into().expect("64-byte block"));
    }
    #[cfg(not(target_arch = "x86_64"))]
    compress_portable(state, blocks);
}

// One step in assembly: `a = b + rotl(a + X[k] + K + f(b, c, d), s)`. The message word and the
// constant are added first (they do not wait for `b`, the previous step's result); the round's
// function leaves its last term in `t`.
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
macro_rules! step {
    ($f:ident, $a:literal, $b:literal, $c:literal, $d:literal, $off:literal, $k:literal, $s:literal) => {
        concat!(
            "add ", $a, ", dword ptr [{p} + ", $off, "]\n",
            "add ", $a, ", ", $k, "\n",
            $f!($a, $b, $c, $d),
            "add ", $a, ", {t:e}\n",
            "rol ", $a, ", ", $s, "\n",
            "add ", $a, ", ", $b, "\n",
        )
    };
}

// Round 1: `d ^ (b & (c ^ d))`.
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
macro_rules! round_f {
    ($a:literal, $b:literal, $c:literal, $d:literal) => {
        concat!("mov {t:e}, ", $c, "\nxor {t:e}, ", $d, "\nand {t:e}, ", $b, "\nxor {t:e}, ", $d, "\n")
    };
}

// Round 2: `(b & d) | (c & !d)`, a sum of two disjoint terms: `c & !d` is added early.
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
macro_rules! round_g {
    ($a:literal, $b:literal, $c:literal, $d:literal) => {
        concat!(
            "mov {t:e}, ", $d, "\nnot {t:e}\nand {t:e}, ", $c, "\nadd ", $a, ", {t:e}\n",
            "mov {t:e}, ", $d, "\nand {t:e}, ", $b, "\n",
        )
    };
}

// Round 3: `b ^ c ^ d`.
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
macro_rules! round_h {
    ($a:literal, $b:literal, $c:literal, $d:literal) => {
        concat!("mov {t:e}, ", $c, "\nxor {t:e}, ", $d, "\nxor {t:e}, ", $b, "\n")
    };
}

// Round 4: `c ^ (b | !d)`.
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
macro_rules! round_i {
    ($a:literal, $b:literal, $c:literal, $d:literal) => {
        concat!("mov {t:e}, ", $d, "\nnot {t:e}\nor {t:e}, ", $b, "\nxor {t:e}, ", $c, "\n")
    };
}

// Four steps with the registers in their rotating roles; each step's message word (byte offset)
// and constant, and the round's four rotations.
#[cfg(target_arch = "x86_64")]
macro_rules! four {
    ($f:ident, [$s0:literal, $s1:literal, $s2:literal, $s3:literal],
     $o0:literal $k0:literal, $o1:literal $k1:literal, $o2:literal $k2:literal, $o3:literal $k3:literal) => {
        concat!(
            step!($f, "{a:e}", "{b:e}", "{c:e}", "{d:e}", $o0, $k0, $s0),
            step!($f, "{d:e}", "{a:e}", "{b:e}", "{c:e}", $o1, $k1, $s1),
            step!($f, "{c:e}", "{d:e}", "{a:e}", "{b:e}", $o2, $k2, $s2),
            step!($f, "{b:e}", "{c:e}", "{d:e}", "{a:e}", $o3, $k3, $s3),
        )
    };
}

#[cfg(target_arch = "x86_64")]
fn compress_asm(state: &mut [u32; 4], block: &[u8; 64]) {
    let [mut a, mut b, mut c, mut d] = *state;
    // SAFETY: the assembly reads the 64 bytes at `p` (a `&[u8; 64]`), writes only the named
    // registers, touches no other memory and does not use the stack.
    unsafe {
        std::arch::asm!(
            four!(round_f, [7, 12, 17, 22], 0 "0xd76aa478", 4 "0xe8c7b756", 8 "0x242070db", 12 "0xc1bdceee"),
            four!(round_f, [7, 12, 17, 22], 16 "0xf57c0faf", 20 "0x4787c62a", 24 "0xa8304613", 28 "0xfd469501"),
            four!(round_f, [7, 12, 17, 22], 32 "0x698098d8", 36 "0x8b44f7af", 40 "0xffff5bb1", 44 "0x895cd7be"),
            four!(round_f, [7, 12, 17, 22], 48 "0x6b901122", 52 "0xfd987193", 56 "0xa679438e", 60 "0x49b40821"),
            four!(round_g, [5, 9, 14, 20], 4 "0xf61e2562", 24 "0xc040b340", 44 "0x265e5a51", 0 "0xe9b6c7aa"),
            four!(round_g, [5, 9, 14, 20], 20 "0xd62f105d", 40 "0x02441453", 60 "0xd8a1e681", 16 "0xe7d3fbc8"),
            four!(round_g, [5, 9, 14, 20], 36 "0x21e1cde6", 56 "0xc33707d6", 12 "0xf4d50d87", 32 "0x455a14ed"),
            four!(round_g, [5, 9, 14, 20], 52 "0xa9e3e905", 8 "0xfcefa3f8", 28 "0x676f02d9", 48 "0x8d2a4c8a"),
            four!(round_h, [4, 11, 16, 23], 20 "0xfffa3942", 32 "0x8771f681", 44 "0x6d9d6122", 56 "0xfde5380c"),
            four!(round_h, [4, 11, 16, 23], 4 "0xa4beea44", 16 "0x4bdecfa9", 28 "0xf6bb4b60", 40 "0xbebfbc70"),
            four!(round_h, [4, 11, 16, 23], 52 "0x289b7ec6", 0 "0xeaa127fa", 12 "0xd4ef3085", 24 "0x04881d05"),
            four!(round_h, [4, 11, 16, 23], 36 "0xd9d4d039", 48 "0xe6db99e5", 60 "0x1fa27cf8", 8 "0xc4ac5665"),
            four!(round_i, [6, 10, 15, 21], 0 "0xf4292244", 28 "0x432aff97", 56 "0xab9423a7", 20 "0xfc93a039"),
            four!(round_i, [6, 10, 15, 21], 48 "0x655b59c3", 12 "0x8f0ccc92", 40 "0xffeff47d", 4 "0x85845dd1"),
            four!(round_i, [6, 10, 15, 21], 32 "0x6fa87e4f", 60 "0xfe2ce6e0", 24 "0xa3014314", 52 "0x4e0811a1"),
            four!(round_i, [6, 10, 15, 21], 16 "0xf7537e82", 44 "0xbd3af235", 8 "0x2ad7d2bb", 36 "0xeb86d391"),
            p = in(reg) block.as_ptr(),
            a = inout(reg) a,
            b = inout(reg) b,
            c = inout(reg) c,
            d = inout(reg) d,
            t = out(reg) _,
            options(pure, readonly, nostack),
        );
    }
    state[0] = state[0].wrapping_add(a);
    state[1] = state[1].wrapping_add(b);
    state[2] = state[2].wrapping_add(c);
    state[3] = state[3].wrapping_add(d);
}

/// The same schedule in Rust, for targets without the assembly (and as a cross-check in tests).
#[cfg(any(test, not(target_arch = "x86_64")))]
fn compress_portable(state: &mut [u32; 4], blocks: &[u8]) {
    // Message word index and rotation of each step.
    const X: [usize; 64] = [
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, //
        1, 6, 11, 0, 5, 10, 15, 4, 9, 14, 3, 8, 13, 2, 7, 12, //
        5, 8, 11, 14, 1, 4, 7, 10, 13, 0, 3, 6, 9, 12, 15, 2, //
        0, 7, 14, 5, 12, 3, 10, 1, 8, 15, 6, 13, 4, 11, 2, 9,
    ];
    const S: [[u32; 4]; 4] = [
        [7, 12, 17, 22],
        [5, 9, 14, 20],
        [4, 11, 16, 23],
        [6, 10, 15, 21],
    ];
    for block in blocks.chunks_exact(64) {
        let mut x = [0u32; 16];
        for (w, b) in x.iter_mut().zip(block.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        let [mut a, mut b, mut c, mut d] = *state;
        for i in 0..64 {
            let early = a.wrapping_add(x[X[i]]).wrapping_add(K[i]);
            let f = match i / 16 {
                0 => d ^ (b & (c ^ d)),
                1 => (c & !d).wrapping_add(b & d),
                2 => b ^ c ^ d,
                _ => c ^ (b | !d),
            };
            let next = early
                .wrapping_add(f)
                .rotate_left(S[i / 16][i % 4])
                .wrapping_add(b);
            (a, b, c, d) = (d, next, b, c);
        }
        state[0] = state[0].wrapping_add(a);
        state[1] = state[1].wrapping_add(b);
        state[2] = state[2].wrapping_add(c);
        state[3] = state[3].wrapping_add(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(d: [u8; 16]) -> String {
        hex::encode(d)
    }

    /// The test suite of RFC 1321, appendix A.5.
    #[test]
    fn rfc_1321_vectors() {
        let cases = [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                "abcdefghijklmnopqrstuvwxyz",
                "c3fcd3d76192e4007dfb496cca67e13b",
            ),
            (
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                "d174ab98d277d9f5a5611c2c9f419d9f",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(hex(Md5::digest(input.as_bytes())), want, "{input:?}");
        }
    }

    /// Reproducible bytes that look random (xorshift).
    pub(super) fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Every length around the padding boundaries, and a larger input, agree with the `md-5`
    /// crate, in one call and fed in uneven pieces.
    #[test]
    fn agrees_with_reference_in_any_pieces() {
        use md5_ref::Digest;
        let data = noise(70_000, 7);
        let lengths = (0..300).chain([4095, 4096, 4097, 65_536, 70_000]);
        for len in lengths {
            let input = &data[..len];
            let want = hex::encode(md5_ref::Md5::digest(input));
            assert_eq!(hex(Md5::digest(input)), want, "one call, {len} bytes");
            let mut h = Md5::new();
            let mut rest = input;
            let mut step = 1;
            while !rest.is_empty() {
                let n = step.min(rest.len());
                h.update(&rest[..n]);
                rest = &rest[n..];
                step = step * 3 % 101 + 1;
            }
            assert_eq!(hex(h.finalize()), want, "pieces, {len} bytes");
        }
    }

    #[test]
    fn assembly_and_portable_block_functions_agree() {
        let data = noise(64 * 1000, 11);
        let mut one = INIT;
        let mut two = INIT;
        compress(&mut one, &data);
        compress_portable(&mut two, &data);
        assert_eq!(one, two);
    }

    #[test]
    fn clone_continues_independently() {
        let mut h = Md5::new();
        h.update(b"hello ");
        let mut other = h.clone();
        h.update(b"world");
        other.update(b"there");
        assert_eq!(hex(h.finalize()), "5eb63bbbe01eeed093cb22bb8f5acdc3");
        assert_eq!(hex(Md5::digest(b"hello there")), hex(other.finalize()));
    }
}
